//! API-key scopes: the scopes a route requires, the (possibly wildcard) scopes a key holds, and how they match.
//!
//! A scope is a list of `:`-separated segments, e.g. `products:read` or `data:geo:read`.
//! A route requires concrete scopes (all must be granted). A key holds scope patterns in which a
//! segment that is exactly `*` stands for **one or more** whole segments. Matching is case-sensitive.
//!
//! | key holds            | grants                                   | does not grant                                   |
//! |----------------------|------------------------------------------|--------------------------------------------------|
//! | `products:read`      | `products:read`                          | `products:write`, `product:read`, `products:readx` |
//! | `products:*`         | `products:read`, `products:delete`       | `bookings:read`, `products`                      |
//! | `*:read`             | `products:read`, `data:geo:read`         | `products:write`, `read`                         |
//! | `data:*`             | `data:geo:read`, `data:seo:read`         | `datasets:read`                                  |
//! | `data:geo:*`         | `data:geo:read`                          | `data:seo:read`                                  |
//! | `data:*:read`        | `data:geo:read`, `data:a:b:read`         | `data:geo:write`                                 |
//! | `*:*`                | `a:b`, `a:b:c`                           | `a`                                              |
//! | `*`                  | everything                               | —                                                |
//! | no `scopes` field    | everything (legacy key)                  | —                                                |
//! | `[]`                 | only routes that require no scope        | any route that names a scope                     |
//!
//! Grammar, checked once when keys and routes are loaded (never on the request path):
//! 1..=16 segments, 1..=128 bytes in total; a literal segment is one or more printable ASCII
//! characters other than `:` and `*`; in a key's pattern a segment may be exactly `*`
//! (`**` and `prod*` are rejected); a route's required scope contains no `*` at all.

use http::HeaderValue;
use std::fmt;
use std::ops::Deref;

/// Longest scope accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most segments a scope may have.
pub const MAX_SEGMENTS: usize = 16;

const HINT: &str =
    "scopes are segments like \"products:read\" separated by ':'; '*' may stand for whole segments";
const REQUIRED_HINT: &str =
    "a route's required scopes must be concrete, like \"products:read\"; only keys may hold '*'";

/// Why a scope string was rejected. Every variant carries the offending scope text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("invalid scope {scope:?}: empty scope ({})", HINT)]
    Empty { scope: String },
    #[error("invalid scope {scope:?}: empty segment ({})", HINT)]
    EmptySegment { scope: String },
    #[error(
        "invalid scope {scope:?}: too long ({len} bytes, at most {} allowed) ({})",
        MAX_SCOPE_LEN,
        HINT
    )]
    TooLong { scope: String, len: usize },
    #[error(
        "invalid scope {scope:?}: too many segments ({count}, at most {} allowed) ({})",
        MAX_SEGMENTS,
        HINT
    )]
    TooManySegments { scope: String, count: usize },
    #[error(
        "invalid scope {scope:?}: character {ch:?} (U+{:04X}) is not allowed; only printable ASCII without whitespace ({})",
        *ch as u32,
        HINT
    )]
    InvalidChar { scope: String, ch: char },
    #[error(
        "invalid scope {scope:?}: \"**\" is not allowed, a single '*' already matches one or more segments ({})",
        HINT
    )]
    DoubleWildcard { scope: String },
    #[error(
        "invalid scope {scope:?}: partial wildcard, '*' must be a whole segment on its own ({})",
        HINT
    )]
    PartialWildcard { scope: String },
    #[error(
        "invalid scope {scope:?}: wildcard in a required scope ({})",
        REQUIRED_HINT
    )]
    WildcardInRequired { scope: String },
}

impl ScopeError {
    /// The scope text that was rejected.
    #[inline]
    pub fn scope(&self) -> &str {
        match self {
            Self::Empty { scope }
            | Self::EmptySegment { scope }
            | Self::TooLong { scope, .. }
            | Self::TooManySegments { scope, .. }
            | Self::InvalidChar { scope, .. }
            | Self::DoubleWildcard { scope }
            | Self::PartialWildcard { scope }
            | Self::WildcardInRequired { scope } => scope,
        }
    }
}

/// A segment of a key's scope pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// Matches one or more whole segments.
    Wildcard,
}

/// Shared grammar check for both kinds of scope. Returns the segments with `*` recognised, so
/// callers decide whether a wildcard is acceptable in their position.
fn parse_segments(s: &str) -> Result<Box<[Segment]>, ScopeError> {
    let err_scope = || s.to_owned();
    if s.is_empty() {
        return Err(ScopeError::Empty { scope: err_scope() });
    }
    if s.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::TooLong {
            scope: err_scope(),
            len: s.len(),
        });
    }
    // Bad characters are reported before structural problems: a stray space or control char
    // is the more likely root cause and the more useful thing to tell an operator.
    if let Some(ch) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(ScopeError::InvalidChar {
            scope: err_scope(),
            ch,
        });
    }
    let count = s.split(':').count();
    if count > MAX_SEGMENTS {
        return Err(ScopeError::TooManySegments {
            scope: err_scope(),
            count,
        });
    }
    s.split(':')
        .map(|seg| {
            if seg.is_empty() {
                Err(ScopeError::EmptySegment { scope: err_scope() })
            } else if seg == "*" {
                Ok(Segment::Wildcard)
            } else if seg.bytes().all(|b| b == b'*') {
                Err(ScopeError::DoubleWildcard { scope: err_scope() })
            } else if seg.contains('*') {
                Err(ScopeError::PartialWildcard { scope: err_scope() })
            } else {
                Ok(Segment::Literal(seg.into()))
            }
        })
        .collect()
}

/// A concrete scope a route requires, e.g. `products:read`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequiredScope {
    text: Box<str>,
    // Pre-split so that matching on the request path allocates nothing.
    segments: Box<[Box<str>]>,
}

impl RequiredScope {
    /// Parses a route's required scope; wildcards are rejected.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let segments = parse_segments(s).map_err(|e| match e {
            // Any '*' in a required scope is the real mistake, whatever shape it has.
            ScopeError::DoubleWildcard { scope } | ScopeError::PartialWildcard { scope } => {
                ScopeError::WildcardInRequired { scope }
            }
            other => other,
        })?;
        let segments = segments
            .into_vec()
            .into_iter()
            .map(|seg| match seg {
                Segment::Literal(lit) => Ok(lit),
                Segment::Wildcard => Err(ScopeError::WildcardInRequired {
                    scope: s.to_owned(),
                }),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: s.into(),
            segments,
        })
    }

    /// The scope as written.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for RequiredScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One scope a key holds, possibly with wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePattern {
    text: Box<str>,
    segments: Box<[Segment]>,
}

impl ScopePattern {
    /// Parses a key's scope; whole-segment `*` wildcards are allowed.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        Ok(Self {
            segments: parse_segments(s)?,
            text: s.into(),
        })
    }

    /// The scope as written.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this pattern covers `required`.
    ///
    /// Segment-level glob where `*` matches one or more segments. Greedy with a single
    /// backtrack point (the most recent `*`), so it runs in O(pattern × required) worst case
    /// and never recurses: a later `*` can absorb anything an earlier one could, so earlier
    /// backtrack points never need revisiting.
    #[inline]
    pub fn grants(&self, required: &RequiredScope) -> bool {
        let pat = &*self.segments;
        let txt = &*required.segments;
        let (mut p, mut t) = (0, 0);
        // (pattern index just after the last `*`, text index where that `*`'s run ends)
        let mut backtrack: Option<(usize, usize)> = None;

        while t < txt.len() {
            match pat.get(p) {
                Some(Segment::Wildcard) => {
                    // The mandatory first segment is consumed here; extra ones via backtracking.
                    p += 1;
                    t += 1;
                    backtrack = Some((p, t));
                }
                Some(Segment::Literal(lit)) if **lit == *txt[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match backtrack {
                    Some((bp, bt)) => {
                        // Let the last `*` swallow one more segment and retry from there.
                        p = bp;
                        t = bt + 1;
                        backtrack = Some((bp, t));
                    }
                    None => return false,
                },
            }
        }
        // Leftover pattern can't match: literals and `*` both need at least one more segment.
        p == pat.len()
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScopes {
    /// The key predates scopes (no `scopes` field): it may call every route.
    Legacy,
    /// The key may call routes whose every required scope is covered by one of these.
    Listed(Box<[ScopePattern]>),
}

impl KeyScopes {
    /// `None` (field absent) => Legacy; `Some(list)` => parse each; first error returned.
    pub fn parse(list: Option<&[String]>) -> Result<Self, ScopeError> {
        match list {
            None => Ok(Self::Legacy),
            Some(list) => Self::parse_list(list),
        }
    }

    /// A listed key's scopes (`[]` included); first error returned.
    pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Self, ScopeError> {
        list.iter()
            .map(|s| ScopePattern::parse(s.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self::Listed)
    }

    /// Whether this key may use `required`.
    #[inline]
    pub fn grants(&self, required: &RequiredScope) -> bool {
        match self {
            Self::Legacy => true,
            Self::Listed(patterns) => patterns.iter().any(|p| p.grants(required)),
        }
    }

    /// true when every required scope is granted (an empty requirement is always satisfied)
    #[inline]
    pub fn grants_all(&self, required: &[RequiredScope]) -> bool {
        required.iter().all(|r| self.grants(r))
    }

    /// Whether a credential derived from this one (a narrowed OAuth token, a browser client
    /// token) may hold `scope`: a legacy key may hand on anything; otherwise `scope` must be
    /// one of these as written, or a scope without wildcards that one of them grants
    /// (`products:read` under `products:*`). A wildcard is never widened: `*:read` does not
    /// cover `products:*`.
    pub fn may_hold(&self, scope: &str) -> bool {
        match self {
            Self::Legacy => true,
            Self::Listed(patterns) => {
                patterns.iter().any(|p| p.as_str() == scope)
                    || RequiredScope::parse(scope)
                        .is_ok_and(|r| patterns.iter().any(|p| p.grants(&r)))
            }
        }
    }

    /// the required scopes this key lacks, in order (used only to build a 403 message)
    pub fn missing<'a>(
        &'a self,
        required: &'a [RequiredScope],
    ) -> impl Iterator<Item = &'a RequiredScope> + 'a {
        required.iter().filter(move |r| !self.grants(r))
    }

    /// space-separated list for an upstream header: Legacy => "*", Listed => the scopes joined by ' ' (empty string for [])
    ///
    /// Unambiguous because the grammar forbids whitespace inside a scope.
    pub fn header_value(&self) -> String {
        match self {
            Self::Legacy => "*".to_owned(),
            Self::Listed(patterns) => patterns
                .iter()
                .map(ScopePattern::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A key's scopes together with their upstream header value, both computed once.
///
/// Keys share these: a snapshot interns identical scope lists (most keys hold one of a handful),
/// so a key carries one pointer instead of its own parsed patterns and header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: KeyScopes,
    header: HeaderValue,
}

impl ScopeSet {
    pub fn new(scopes: KeyScopes) -> Self {
        // The grammar admits only visible ASCII, joined by spaces: always a valid header value.
        let header = HeaderValue::from_str(&scopes.header_value())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        ScopeSet { scopes, header }
    }

    pub fn scopes(&self) -> &KeyScopes {
        &self.scopes
    }

    /// [`KeyScopes::header_value`], ready to send: cloning it copies no bytes.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl Deref for ScopeSet {
    type Target = KeyScopes;
    fn deref(&self) -> &KeyScopes {
        &self.scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> RequiredScope {
        RequiredScope::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pat(s: &str) -> ScopePattern {
        ScopePattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(list: &[&str]) -> KeyScopes {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        KeyScopes::parse(Some(&owned)).unwrap()
    }

    fn assert_grants(pattern: &str, yes: &[&str], no: &[&str]) {
        let p = pat(pattern);
        let k = key(&[pattern]);
        for r in yes {
            assert!(p.grants(&req(r)), "{pattern} should grant {r}");
            assert!(k.grants(&req(r)), "key [{pattern}] should grant {r}");
        }
        for r in no {
            assert!(!p.grants(&req(r)), "{pattern} should not grant {r}");
            assert!(!k.grants(&req(r)), "key [{pattern}] should not grant {r}");
        }
    }

    const EVERYTHING: &[&str] = &[
        "a",
        "products",
        "products:read",
        "data:geo:read",
        "a:b:c:d:e:f:g:h:i:j:k:l:m:n:o:p",
    ];

    // ---- the semantics table ----

    #[test]
    fn exact_scope() {
        assert_grants(
            "products:read",
            &["products:read"],
            &["products:write", "product:read", "products:readx"],
        );
    }

    #[test]
    fn trailing_wildcard() {
        assert_grants(
            "products:*",
            &["products:read", "products:write", "products:delete"],
            &["bookings:read", "products"],
        );
    }

    #[test]
    fn leading_wildcard() {
        assert_grants(
            "*:read",
            &["products:read", "data:geo:read"],
            &["products:write", "read"],
        );
    }

    #[test]
    fn wildcard_spans_several_segments() {
        assert_grants(
            "data:*",
            &["data:geo:read", "data:seo:read"],
            &["datasets:read"],
        );
    }

    #[test]
    fn deeper_trailing_wildcard() {
        assert_grants("data:geo:*", &["data:geo:read"], &["data:seo:read"]);
    }

    #[test]
    fn lone_wildcard_grants_everything() {
        assert_grants("*", EVERYTHING, &[]);
    }

    #[test]
    fn legacy_key_grants_everything() {
        let k = KeyScopes::parse(None).unwrap();
        assert_eq!(k, KeyScopes::Legacy);
        for r in EVERYTHING {
            assert!(k.grants(&req(r)));
        }
        let all: Vec<_> = EVERYTHING.iter().map(|r| req(r)).collect();
        assert!(k.grants_all(&all));
        assert!(k.grants_all(&[]));
    }

    #[test]
    fn empty_list_grants_only_empty_requirement() {
        let k = key(&[]);
        assert!(k.grants_all(&[]));
        for r in EVERYTHING {
            assert!(!k.grants(&req(r)));
            assert!(!k.grants_all(&[req(r)]));
        }
    }

    #[test]
    fn middle_wildcard() {
        assert_grants(
            "data:*:read",
            &["data:geo:read", "data:a:b:read"],
            &["data:geo:write", "data:read"],
        );
    }

    #[test]
    fn multiple_wildcards() {
        assert_grants("*:*", &["a:b", "a:b:c"], &["a"]);
    }

    #[test]
    fn backtracking_cases() {
        assert_grants(
            "*:a:*:b",
            &["x:a:y:b", "a:a:a:b", "x:a:a:b:b", "x:a:b:a:y:b"],
            &["a:b", "x:a:b", "x:a:y:c", "a:a:b"],
        );
        assert_grants("*:b", &["a:b:b", "b:b"], &["b", "b:a"]);
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert_grants("products:read", &[], &["Products:read", "products:READ"]);
    }

    /// Exhaustive cross-check of the greedy matcher against a plainly-correct recursive one.
    #[test]
    fn glob_agrees_with_reference() {
        fn reference(p: &[&str], t: &[&str]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"*", rest)) => (1..=t.len()).any(|k| reference(rest, &t[k..])),
                Some((lit, rest)) => t.first() == Some(lit) && reference(rest, &t[1..]),
            }
        }
        fn all_words(alphabet: &[&'static str], max: usize) -> Vec<Vec<&'static str>> {
            let mut out = vec![];
            let mut layer: Vec<Vec<&str>> = vec![vec![]];
            for _ in 0..max {
                layer = layer
                    .iter()
                    .flat_map(|w| {
                        alphabet.iter().map(move |a| {
                            let mut w = w.clone();
                            w.push(a);
                            w
                        })
                    })
                    .collect();
                out.extend(layer.iter().cloned());
            }
            out
        }
        let patterns = all_words(&["a", "b", "*"], 5);
        let texts = all_words(&["a", "b"], 6);
        let texts: Vec<_> = texts.iter().map(|t| (t, req(&t.join(":")))).collect();
        for p in &patterns {
            let compiled = pat(&p.join(":"));
            for (t, r) in &texts {
                assert_eq!(
                    compiled.grants(r),
                    reference(p, t),
                    "pattern {p:?} text {t:?}"
                );
            }
        }
    }

    // ---- KeyScopes helpers ----

    #[test]
    fn any_pattern_may_grant() {
        let k = key(&["products:read", "bookings:*"]);
        assert!(k.grants(&req("products:read")));
        assert!(k.grants(&req("bookings:write")));
        assert!(!k.grants(&req("products:write")));
        assert!(k.grants_all(&[req("products:read"), req("bookings:x:y")]));
        assert!(!k.grants_all(&[req("products:read"), req("products:write")]));
    }

    #[test]
    fn missing_lists_ungranted_in_order() {
        let k = key(&["products:read"]);
        let required = [
            req("orders:write"),
            req("products:read"),
            req("bookings:read"),
        ];
        let missing: Vec<&str> = k.missing(&required).map(RequiredScope::as_str).collect();
        assert_eq!(missing, ["orders:write", "bookings:read"]);
        assert_eq!(KeyScopes::Legacy.missing(&required).count(), 0);
        assert_eq!(k.missing(&[]).count(), 0);
    }

    #[test]
    fn header_values() {
        assert_eq!(KeyScopes::Legacy.header_value(), "*");
        assert_eq!(key(&[]).header_value(), "");
        assert_eq!(key(&["products:read"]).header_value(), "products:read");
        assert_eq!(
            key(&["products:read", "data:*"]).header_value(),
            "products:read data:*"
        );
    }

    #[test]
    fn scope_sets_carry_their_header_and_deref_to_the_scopes() {
        let set = ScopeSet::new(key(&["products:read", "data:*"]));
        assert_eq!(set.header(), "products:read data:*");
        assert!(set.grants(&req("data:geo:read")));
        assert!(!set.grants(&req("orders:read")));
        assert_eq!(ScopeSet::new(KeyScopes::Legacy).header(), "*");
        assert_eq!(ScopeSet::new(key(&[])).header(), "");
        assert_eq!(KeyScopes::parse_list(&["a:b"]).unwrap(), key(&["a:b"]));
    }

    #[test]
    fn key_parse_returns_first_error() {
        let list = vec![
            "ok:scope".to_string(),
            "bad::one".to_string(),
            "bad two".to_string(),
        ];
        let err = KeyScopes::parse(Some(&list)).unwrap_err();
        assert_eq!(
            err,
            ScopeError::EmptySegment {
                scope: "bad::one".into()
            }
        );
    }

    #[test]
    fn as_str_and_display_round_trip() {
        assert_eq!(req("data:geo:read").as_str(), "data:geo:read");
        assert_eq!(pat("data:*:read").as_str(), "data:*:read");
        assert_eq!(req("a:b").to_string(), "a:b");
        assert_eq!(pat("*").to_string(), "*");
    }

    // ---- grammar: one test per rejection reason ----

    fn pattern_err(s: &str) -> ScopeError {
        ScopePattern::parse(s).expect_err(s)
    }

    #[test]
    fn rejects_empty_scope() {
        let e = pattern_err("");
        assert_eq!(e, ScopeError::Empty { scope: "".into() });
        assert_eq!(
            RequiredScope::parse("").unwrap_err(),
            ScopeError::Empty { scope: "".into() }
        );
    }

    #[test]
    fn rejects_empty_segment() {
        for s in ["products::read", ":products", "products:", ":", "a:*::b"] {
            assert_eq!(
                pattern_err(s),
                ScopeError::EmptySegment { scope: s.into() },
                "{s}"
            );
            assert!(RequiredScope::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn error_message_names_scope_reason_and_grammar() {
        assert_eq!(
            pattern_err("products::read").to_string(),
            "invalid scope \"products::read\": empty segment (scopes are segments like \
             \"products:read\" separated by ':'; '*' may stand for whole segments)"
        );
        let msg = RequiredScope::parse("products:*").unwrap_err().to_string();
        assert!(msg.starts_with("invalid scope \"products:*\": wildcard in a required scope"));
    }

    #[test]
    fn rejects_too_long() {
        let ok = "a".repeat(MAX_SCOPE_LEN);
        assert!(ScopePattern::parse(&ok).is_ok());
        assert!(RequiredScope::parse(&ok).is_ok());
        let long = "a".repeat(MAX_SCOPE_LEN + 1);
        assert_eq!(
            pattern_err(&long),
            ScopeError::TooLong {
                scope: long.clone(),
                len: MAX_SCOPE_LEN + 1
            }
        );
        assert!(pattern_err(&long).to_string().contains("too long"));
    }

    #[test]
    fn rejects_too_many_segments() {
        let ok = vec!["a"; MAX_SEGMENTS].join(":");
        assert!(ScopePattern::parse(&ok).is_ok());
        assert!(RequiredScope::parse(&ok).is_ok());
        let many = vec!["a"; MAX_SEGMENTS + 1].join(":");
        assert_eq!(
            pattern_err(&many),
            ScopeError::TooManySegments {
                scope: many.clone(),
                count: MAX_SEGMENTS + 1
            }
        );
    }

    #[test]
    fn rejects_whitespace_control_and_non_ascii() {
        for (s, ch) in [
            ("products:read ", ' '),
            (" products:read", ' '),
            ("products:\tread", '\t'),
            ("products:read\n", '\n'),
            ("products:\u{7f}", '\u{7f}'),
            ("products:\0", '\0'),
            ("produits:lécture", 'é'),
            ("products:\u{a0}read", '\u{a0}'),
        ] {
            assert_eq!(
                pattern_err(s),
                ScopeError::InvalidChar {
                    scope: s.into(),
                    ch
                },
                "{s:?}"
            );
            assert!(RequiredScope::parse(s).is_err(), "{s:?}");
        }
        // Debug-quoting keeps control characters visible in the message.
        assert!(
            pattern_err("a:\tb")
                .to_string()
                .starts_with("invalid scope \"a:\\tb\": character '\\t' (U+0009)")
        );
    }

    #[test]
    fn rejects_double_wildcard() {
        for s in ["**", "products:**", "***:read"] {
            assert_eq!(
                pattern_err(s),
                ScopeError::DoubleWildcard { scope: s.into() },
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_partial_wildcard() {
        for s in ["prod*", "products:*read", "a:r*d:b", "*x"] {
            assert_eq!(
                pattern_err(s),
                ScopeError::PartialWildcard { scope: s.into() },
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_wildcard_in_required_scope() {
        for s in ["*", "products:*", "*:read", "data:*:read", "prod*", "**"] {
            assert_eq!(
                RequiredScope::parse(s).unwrap_err(),
                ScopeError::WildcardInRequired { scope: s.into() },
                "{s}"
            );
        }
    }

    #[test]
    fn accepts_printable_ascii_punctuation() {
        for s in ["a-b_c.d", "x/y", "v1:~!@#$%^&()+="] {
            assert!(RequiredScope::parse(s).is_ok(), "{s}");
            assert!(ScopePattern::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn error_exposes_scope() {
        assert_eq!(pattern_err("a b").scope(), "a b");
    }

    #[test]
    fn a_derived_credential_may_hold_what_its_source_covers_and_never_a_wider_wildcard() {
        let listed = KeyScopes::parse_list(&["products:*", "*:read", "orders:write"]).unwrap();
        for ok in [
            "products:*",
            "products:read",
            "products:images:write",
            "geo:read",
            "*:read",
            "orders:write",
        ] {
            assert!(listed.may_hold(ok), "{ok}");
        }
        for refused in [
            "*",
            "orders:*",
            "orders:read:all:*",
            "orders:delete",
            "*:write",
            "not a scope",
        ] {
            assert!(!listed.may_hold(refused), "{refused}");
        }
        assert!(KeyScopes::Legacy.may_hold("*"));
        assert!(
            !KeyScopes::parse_list::<&str>(&[])
                .unwrap()
                .may_hold("products:read")
        );
    }
}
