//! Request-path normalisation: the one canonical spelling of a request path, used both for route matching and as the path forwarded upstream.
//!
//! Matching and forwarding the *same* string is what makes this safe: whatever
//! spelling a client uses, the route that is checked is the route of the path
//! the upstream receives.

use std::borrow::Cow;

use thiserror::Error;

/// Why a path was refused. The messages never echo the client's input, so
/// they can be sent back in a 400 response as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path must start with \"/\"")]
    NotAbsolute,
    #[error("path contains a malformed percent-escape")]
    BadEscape,
    #[error("path contains an encoded \"/\", \"\\\" or NUL")]
    EncodedSeparator,
    #[error("path contains a forbidden character")]
    BadCharacter,
    #[error("path contains an encoded control character")]
    EncodedControl,
    #[error("path contains a double-encoded \".\", \"/\", \"\\\" or NUL")]
    DoubleEncoded,
    #[error("path contains percent-escapes that do not decode to UTF-8")]
    NotUtf8,
    #[error("path contains a \".\" or \"..\" segment with parameters")]
    DotSegmentParams,
    #[error("request target must be a path starting with \"/\" or an http(s) URL")]
    NotOriginForm,
}

/// Normalises the path part of a request URI (the query must already be
/// split off).
///
/// The result has unreserved percent-escapes decoded, all other escapes in
/// upper-case hex, bytes that may not appear raw in a path percent-encoded,
/// no repeated slashes and no `.`/`..` segments. A trailing slash is kept.
/// Input that is already canonical is returned borrowed.
///
/// Spellings that mean one path to keygate but may mean another to an upstream that decodes
/// once more or understands path parameters are refused (see [`refuse_ambiguous`]).
pub fn normalize(raw_path: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let canonical = if is_canonical(raw_path)? {
        Cow::Borrowed(raw_path)
    } else {
        Cow::Owned(rebuild(raw_path)?)
    };
    refuse_ambiguous(&canonical)?;
    Ok(canonical)
}

/// Refuses a canonical path that an upstream could read as a different path than keygate
/// matched:
/// - a `.`/`..` segment with parameters (`/public/..;/admin`): servlet containers drop the
///   `;…` part and then resolve the dot segment;
/// - a double-encoded `.`, `/`, `\` or NUL (`%252e`): an upstream that decodes twice sees a
///   dot segment or a separator keygate never saw;
/// - escapes that do not decode to UTF-8, such as the overlong `%C0%AE` for `.`, which lenient
///   decoders turn into ASCII.
///
/// Other `;` and `%25` uses are ordinary path characters and pass.
fn refuse_ambiguous(canonical: &str) -> Result<(), PathError> {
    let bytes = canonical.as_bytes();
    let mut high_escapes = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b';' => {
                let segment_start = bytes[..i]
                    .iter()
                    .rposition(|&c| c == b'/')
                    .map_or(0, |s| s + 1);
                if matches!(&bytes[segment_start..i], b"." | b"..") {
                    return Err(PathError::DotSegmentParams);
                }
            }
            // Canonical escapes are well formed: `%` and two upper-case hex digits.
            b'%' => match &bytes[i + 1..i + 3] {
                b"25" => {
                    let next = bytes.get(i + 3..i + 5).map(|n| n.to_ascii_uppercase());
                    if matches!(next.as_deref(), Some(b"2E" | b"2F" | b"5C" | b"00")) {
                        return Err(PathError::DoubleEncoded);
                    }
                }
                [hi, _] if *hi >= b'8' => high_escapes = true,
                _ => {}
            },
            _ => {}
        }
    }
    if high_escapes && !decodes_to_utf8(bytes) {
        return Err(PathError::NotUtf8);
    }
    Ok(())
}

/// Whether the bytes a canonical path's escapes stand for form valid UTF-8.
fn decodes_to_utf8(canonical: &[u8]) -> bool {
    let mut decoded = Vec::with_capacity(canonical.len());
    let mut i = 0;
    while i < canonical.len() {
        match (canonical[i], canonical.get(i + 1..i + 3)) {
            (b'%', Some([hi, lo])) => {
                let value = hex_value(*hi).zip(hex_value(*lo)).map(|(h, l)| h << 4 | l);
                decoded.push(value.unwrap_or(0xFF));
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// What to do with a byte that appears unescaped (other than `/` and `%`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    Keep,
    Encode,
    Reject,
}

fn classify_raw(b: u8) -> Raw {
    match b {
        // `?` and `#` cannot be in a path once the query is split off; if one
        // is here the caller mis-split the URI, and forwarding it would let the
        // upstream see a shorter path than the one we matched.
        0x00..=0x1F | 0x7F | b'\\' | b'?' | b'#' => Raw::Reject,
        b if is_unreserved(b) => Raw::Keep,
        // RFC 3986 pchar: sub-delims, ':' and '@' are legal unescaped and are
        // not equivalent to their escapes, so they are left alone.
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':'
        | b'@' => Raw::Keep,
        // Space, `"<>[]^`{|}` and non-ASCII bytes are not legal in a URI path;
        // escaping them makes `/café` and `/caf%C3%A9` one path.
        _ => Raw::Encode,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Decodes the escape whose `%` is at `i`, refusing those that would change
/// the path's structure for an upstream that decodes them.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex_value);
    let lo = bytes.get(i + 2).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => match hi << 4 | lo {
            b'/' | b'\\' | 0 => Err(PathError::EncodedSeparator),
            // Pingora percent-encodes raw control bytes in the request line before keygate sees
            // it, so `%01` is how a raw 0x01 arrives: refused like the raw byte would be.
            0x01..=0x1F | 0x7F => Err(PathError::EncodedControl),
            value => Ok(value),
        },
        _ => Err(PathError::BadEscape),
    }
}

/// Allocation-free check of whether `rebuild` would return `raw` unchanged.
/// It stops at the first reason to rebuild and leaves the rest of the
/// validation to `rebuild`, which scans in the same order and so reports the
/// same first error.
fn is_canonical(raw: &str) -> Result<bool, PathError> {
    let bytes = raw.as_bytes();
    let mut segment_start = 1;
    let mut i = 1;
    loop {
        if i == bytes.len() || bytes[i] == b'/' {
            let segment = &bytes[segment_start..i];
            let last = i == bytes.len();
            // Only the final segment may be empty: that is the trailing slash
            // (or the root "/"), which is kept.
            if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
                return Ok(false);
            }
            if last {
                return Ok(true);
            }
            i += 1;
            segment_start = i;
            continue;
        }
        match bytes[i] {
            b'%' => {
                if is_unreserved(escape_at(bytes, i)?)
                    || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase)
                {
                    return Ok(false);
                }
                i += 3;
            }
            b => match classify_raw(b) {
                Raw::Keep => i += 1,
                Raw::Encode => return Ok(false),
                Raw::Reject => return Err(PathError::BadCharacter),
            },
        }
    }
}

fn rebuild(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut ends_with_slash = false;
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let start = out.len();
        out.push('/');
        push_segment(&mut out, segment)?;
        // Decoding happened first, so `%2E%2E` is seen as `..` here. Decoded
        // text never contains '/', so segment boundaries are those of `raw`.
        let is_dot_or_empty = match &out[start + 1..] {
            "" | "." => {
                out.truncate(start);
                true
            }
            ".." => {
                out.truncate(start);
                // Every kept segment begins with the only '/' it contains.
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                true
            }
            _ => false,
        };
        if segments.peek().is_none() {
            // RFC 3986 §5.2.4 leaves a slash after a final dot segment, and a
            // final empty segment is the client's trailing slash.
            ends_with_slash = is_dot_or_empty;
        }
    }
    if out.is_empty() || ends_with_slash {
        out.push('/');
    }
    Ok(out)
}

fn push_segment(out: &mut String, segment: &str) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = escape_at(bytes, i)?;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    push_escaped(out, value);
                }
                i += 3;
            }
            b => {
                match classify_raw(b) {
                    Raw::Keep => out.push(char::from(b)),
                    Raw::Encode => push_escaped(out, b),
                    Raw::Reject => return Err(PathError::BadCharacter),
                }
                i += 1;
            }
        }
    }
    Ok(())
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xF)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    fn assert_borrowed(p: &str) {
        match normalize(p) {
            Ok(Cow::Borrowed(out)) => assert_eq!(out, p),
            other => panic!("{p:?}: expected borrowed, got {other:?}"),
        }
    }

    fn assert_owned(p: &str, expected: &str) {
        match normalize(p) {
            Ok(Cow::Owned(out)) => assert_eq!(out, expected, "{p:?}"),
            other => panic!("{p:?}: expected owned {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/v1",
            "/v1/products",
            "/v1/products/",
            "/v1/products/123",
            "/caf%C3%A9",
            "/a%20b",
            "/a%2Bb%25",
            "/x.y/.z/..w/...",
            "/a:b@c!$&'()*+,;=",
            "/-._~",
        ] {
            assert_borrowed(p);
        }
        // `%2E` encodes an unreserved character, so it is not canonical.
        assert_owned("/a%2Eb", "/a.b");
    }

    #[test]
    fn must_be_absolute() {
        for p in ["", "v1/products", "*", "%2F", "http://x/"] {
            assert_eq!(norm(p), Err(PathError::NotAbsolute), "{p:?}");
        }
    }

    #[test]
    fn decodes_unreserved_escapes() {
        assert_owned("/v1/%70roducts", "/v1/products");
        assert_owned("/%41%5a%61%7A%30%39", "/AZaz09");
        assert_owned("/%2D%2e%5F%7e", "/-._~");
        assert_owned("/a%2Eb", "/a.b");
    }

    #[test]
    fn uppercases_other_escapes() {
        assert_borrowed("/caf%C3%A9");
        assert_owned("/caf%c3%a9", "/caf%C3%A9");
        assert_owned("/caf%C3%a9", "/caf%C3%A9");
        assert_owned("/%e2%82%ac/%3f%23", "/%E2%82%AC/%3F%23");
    }

    #[test]
    fn keeps_reserved_escapes_distinct_from_raw() {
        assert_owned("/a%3ab", "/a%3Ab");
        assert_borrowed("/a:b");
        assert_owned("/%25%2a", "/%25%2A");
    }

    #[test]
    fn encodes_bytes_not_allowed_raw() {
        assert_owned("/café", "/caf%C3%A9");
        assert_owned("/a b", "/a%20b");
        assert_owned("/{x}|[y]", "/%7Bx%7D%7C%5By%5D");
        assert_owned("/a\"<>^`", "/a%22%3C%3E%5E%60");
    }

    #[test]
    fn rejects_bad_escapes() {
        for p in [
            "/a%zz", "/a%2", "/a%", "/%", "/a%g0", "/a%0g", "/a%%41", "/a%é",
        ] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p:?}");
        }
    }

    #[test]
    fn rejects_encoded_separators() {
        for p in [
            "/%2F", "/%2f", "/a%2fb", "/a%2Fb", "/a%5cb", "/a%5Cb", "/a%00", "/%2e/%2F",
        ] {
            assert_eq!(norm(p), Err(PathError::EncodedSeparator), "{p:?}");
        }
    }

    #[test]
    fn rejects_bad_characters() {
        for p in [
            "/a\\b", "/a\0", "/a\tb", "/a\nb", "/a\rb", "/a\x1f", "/a\x7f", "/a?", "/a?x=1",
            "/a#frag",
        ] {
            assert_eq!(norm(p), Err(PathError::BadCharacter), "{p:?}");
        }
    }

    #[test]
    fn rejects_encoded_control_characters() {
        for p in ["/a%01", "/a%1F", "/a%1f/b", "/%7F", "/a%0A", "/a%0d%0a"] {
            assert_eq!(norm(p), Err(PathError::EncodedControl), "{p:?}");
        }
        assert_borrowed("/a%20b");
    }

    #[test]
    fn rejects_dot_segments_with_parameters() {
        for p in [
            "/public/..;/v1/products",
            "/public/..;x=1/v1",
            "/a/.;/b",
            "/public/%2e%2e;/v1",
            "/public/%2E%2E;jsessionid=1/admin",
            "/..;",
        ] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParams), "{p:?}");
        }
        // Parameters elsewhere are ordinary path characters.
        assert_borrowed("/v1/products;v=2");
        assert_borrowed("/v1/a..;b");
        assert_borrowed("/v1/...;");
    }

    #[test]
    fn rejects_double_encoded_separators_and_dots() {
        for p in [
            "/public/%252e%252e/v1",
            "/a%252F",
            "/a%252f",
            "/a%255c",
            "/a%2500",
            "/a%25%32%65",
        ] {
            assert_eq!(norm(p), Err(PathError::DoubleEncoded), "{p:?}");
        }
        assert_borrowed("/discount/100%25");
        assert_borrowed("/a%2541");
    }

    #[test]
    fn rejects_escapes_that_are_not_utf8() {
        for p in [
            "/public/%c0%ae%c0%ae/v1",
            "/%C0%AF",
            "/%E0%80%AE",
            "/a%FF",
            "/caf%C3",
        ] {
            assert_eq!(norm(p), Err(PathError::NotUtf8), "{p:?}");
        }
        assert_borrowed("/caf%C3%A9");
        assert_owned("/café", "/caf%C3%A9");
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(norm("/a%zz/%2F"), Err(PathError::BadEscape));
        assert_eq!(norm("/%2F/%zz"), Err(PathError::EncodedSeparator));
        // Same order when the path needed rebuilding before the error.
        assert_eq!(norm("//a\\/%2F"), Err(PathError::BadCharacter));
        assert_eq!(norm("/%41/%2F/\\"), Err(PathError::EncodedSeparator));
    }

    #[test]
    fn merges_repeated_slashes() {
        assert_owned("/v1//products", "/v1/products");
        assert_owned("//", "/");
        assert_owned("///v1///products///", "/v1/products/");
        assert_owned("//v1", "/v1");
    }

    #[test]
    fn removes_dot_segments() {
        assert_owned("/v1/./products", "/v1/products");
        assert_owned("/v1/a/../products", "/v1/products");
        assert_owned("/../v1", "/v1");
        assert_owned("/..", "/");
        assert_owned("/.", "/");
        assert_owned("/a/b/../../..", "/");
        assert_owned("/a/b/../../../c", "/c");
        assert_owned("/a/b/..", "/a/");
        assert_owned("/a/.", "/a/");
        assert_owned("/a/./", "/a/");
        assert_owned("/a/b/../", "/a/");
        assert_owned("/a//../b", "/b");
    }

    #[test]
    fn removes_encoded_dot_segments() {
        assert_owned("/v1/products/%2e%2e/admin", "/v1/admin");
        assert_owned("/v1/%2E/products", "/v1/products");
        assert_owned("/v1/x/.%2e/admin", "/v1/admin");
        assert_owned("/%2e%2e/%2e%2e/etc", "/etc");
    }

    #[test]
    fn keeps_trailing_slash() {
        assert_borrowed("/v1/products/");
        assert_owned("/v1//products//", "/v1/products/");
        assert_owned("/v1/%70roducts/", "/v1/products/");
    }

    #[test]
    fn root() {
        assert_borrowed("/");
        assert_owned("//", "/");
    }

    /// Every path up to a small length over an alphabet that exercises all
    /// rules: the fast check must agree with the rebuild, and the result must
    /// be canonical (normalising it again changes nothing).
    #[test]
    fn exhaustive_short_paths_are_consistent() {
        const ALPHABET: [&str; 12] = ["/", ".", "a", "%", "2", "e", "E", "f", "5", "C", "7", "é"];
        let mut checked = 0;
        let mut stack = vec![String::from("/")];
        while let Some(path) = stack.pop() {
            checked += 1;
            let fast = normalize(&path);
            let slow = rebuild(&path).and_then(|p| refuse_ambiguous(&p).map(|()| p));
            match (&fast, &slow) {
                (Ok(Cow::Borrowed(out)), Ok(rebuilt)) => {
                    assert_eq!(out, rebuilt, "{path:?}: borrowed but rebuild differs");
                }
                (Ok(Cow::Owned(out)), Ok(rebuilt)) => {
                    assert_eq!(out, rebuilt, "{path:?}");
                    assert_ne!(out, &path, "{path:?}: allocated for a canonical path");
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{path:?}"),
                _ => panic!("{path:?}: fast {fast:?} vs rebuild {slow:?}"),
            }
            if let Ok(out) = &fast {
                assert!(
                    matches!(normalize(out), Ok(Cow::Borrowed(_))),
                    "{path:?} -> {out:?} is not canonical"
                );
                assert!(out.is_ascii(), "{out:?}");
                assert!(!out.contains("//"), "{out:?}");
                assert!(!out.split('/').any(|s| s == "." || s == ".."), "{out:?}");
            }
            if path.chars().count() < 6 {
                for c in ALPHABET {
                    stack.push(format!("{path}{c}"));
                }
            }
        }
        assert!(checked > 200_000);
    }
}
