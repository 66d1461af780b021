//! Where a browser can put a credential besides `Authorization`: the `access_token` query
//! parameter, and an `access_token.<token>` entry of `Sec-WebSocket-Protocol` (a browser's
//! `WebSocket` cannot set headers, only subprotocols). Finding such a credential, and taking it
//! out of what the upstream receives.
//!
//! Only browser client tokens are accepted from here, only on routes marked `browser: true`
//! ([`crate::gate`] decides); anywhere else a credential found here is refused, so that no URL
//! carrying one is forwarded (URLs end up in logs, histories and `Referer`).

use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::{HeaderMap, HeaderValue};

/// The query parameter a client token may come in.
pub const QUERY_PARAMETER: &str = "access_token";
/// The prefix of the `Sec-WebSocket-Protocol` entry a client token may come in.
pub const PROTOCOL_PREFIX: &str = "access_token.";

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Query,
    WebSocketProtocol,
}

/// The credential a request carries outside `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    None,
    One(&'a str, Carrier),
    /// More than one (in either place or both): which one counts is not left to chance.
    Several,
}

/// Looks in the query and in `Sec-WebSocket-Protocol`. Costs a scan of the query for the
/// parameter's name and one header lookup; nothing is allocated.
pub fn find<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Found<'a> {
    let mut found = Found::None;
    let mut add = |value: &'a str, carrier| {
        found = match found {
            Found::None => Found::One(value, carrier),
            _ => Found::Several,
        };
    };
    if let Some(query) = query.filter(|q| may_name_parameter(q)) {
        for (name, value) in parameters(query) {
            if is_parameter(name) {
                add(value, Carrier::Query);
            }
        }
    }
    for header in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        // A value that is not text cannot be a token; it is forwarded as it is.
        let Ok(list) = header.to_str() else { continue };
        for entry in list.split(',').map(str::trim) {
            if let Some(token) = entry.strip_prefix(PROTOCOL_PREFIX) {
                add(token, Carrier::WebSocketProtocol);
            }
        }
    }
    found
}

/// The query without the `access_token` parameter, `None` when nothing else is left. The
/// other parameters keep their bytes and order.
pub fn strip_query(query: &str) -> Option<String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    let mut separator = None;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (piece, next) = rest.split_at(end);
        let (name, _) = piece.split_once('=').unwrap_or((piece, ""));
        if !is_parameter(name) {
            if let Some(sep) = separator.filter(|_| !out.is_empty()) {
                out.push(sep);
            }
            out.push_str(piece);
        }
        let Some(sep) = next.chars().next() else {
            break;
        };
        separator = Some(sep);
        rest = &next[1..];
    }
    (!out.is_empty()).then_some(out)
}

/// `Sec-WebSocket-Protocol` without the token's entry: the other subprotocols, in order, as one
/// value; `None` when none is left (the header is then removed).
pub fn strip_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with(PROTOCOL_PREFIX))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// `name=value` pairs split at `&` and `;` (some servers split at either, so both are read).
fn parameters(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split(['&', ';'])
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether a query could name the parameter at all: its name, or a percent-escape that might
/// spell it. The common query is passed over with one search.
fn may_name_parameter(query: &str) -> bool {
    query.contains('%') || query.contains(QUERY_PARAMETER)
}

/// Whether a parameter's name is `access_token`, as written or percent-encoded (an upstream
/// decodes the name, so `access%5Ftoken` is the same parameter to it).
fn is_parameter(name: &str) -> bool {
    if name == QUERY_PARAMETER {
        return true;
    }
    if !name.contains('%') || name.len() > 3 * QUERY_PARAMETER.len() {
        return false;
    }
    // Decoded byte by byte against the name, so nothing is allocated.
    let (bytes, want) = (name.as_bytes(), QUERY_PARAMETER.as_bytes());
    let (mut i, mut matched) = (0, 0);
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        i += 2;
                        b
                    }
                    None => return false,
                }
            }
            b => b,
        };
        if want.get(matched) != Some(&b) {
            return false;
        }
        matched += 1;
        i += 1;
    }
    matched == want.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(protocols: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for p in protocols {
            h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
        }
        h
    }

    #[test]
    fn a_token_is_found_in_the_query_in_any_spelling_of_its_name() {
        let none = HeaderMap::new();
        for query in [
            "access_token=T",
            "a=1&access_token=T",
            "a=1;access_token=T&b=2",
            "access%5Ftoken=T",
            "%61ccess_token=T",
        ] {
            assert_eq!(
                find(Some(query), &none),
                Found::One("T", Carrier::Query),
                "{query}"
            );
        }
        for query in [
            "a=1",
            "access_tokens=T",
            "xaccess_token=T",
            "access%ZZtoken=T",
        ] {
            assert_eq!(find(Some(query), &none), Found::None, "{query}");
        }
        assert_eq!(find(None, &none), Found::None);
    }

    #[test]
    fn a_token_is_found_among_the_subprotocols() {
        let h = headers(&["chat, access_token.T"]);
        assert_eq!(find(None, &h), Found::One("T", Carrier::WebSocketProtocol));
        let h = headers(&["chat", "access_token.T"]);
        assert_eq!(find(None, &h), Found::One("T", Carrier::WebSocketProtocol));
        assert_eq!(find(None, &headers(&["chat, v2"])), Found::None);
    }

    #[test]
    fn two_tokens_anywhere_are_several() {
        let none = HeaderMap::new();
        assert_eq!(
            find(Some("access_token=A&access_token=B"), &none),
            Found::Several
        );
        assert_eq!(
            find(Some("access_token=A&access%5ftoken=B"), &none),
            Found::Several
        );
        let h = headers(&["access_token.A, access_token.B"]);
        assert_eq!(find(None, &h), Found::Several);
        let h = headers(&["access_token.B"]);
        assert_eq!(find(Some("access_token=A"), &h), Found::Several);
    }

    #[test]
    fn stripping_the_query_keeps_every_other_byte() {
        for (query, left) in [
            ("access_token=T", None),
            ("access_token=T&a=1", Some("a=1")),
            ("a=1&access_token=T", Some("a=1")),
            ("a=1&access_token=T&b=%20x", Some("a=1&b=%20x")),
            ("a=1;access_token=T;b", Some("a=1;b")),
            ("access%5Ftoken=T&a", Some("a")),
            ("a&&b", Some("a&&b")),
        ] {
            assert_eq!(strip_query(query).as_deref(), left, "{query}");
        }
    }

    #[test]
    fn stripping_the_protocol_keeps_the_other_subprotocols() {
        let h = headers(&["chat, access_token.T", "v2"]);
        assert_eq!(strip_protocol(&h).unwrap(), "chat, v2");
        assert_eq!(strip_protocol(&headers(&["access_token.T"])), None);
    }
}
