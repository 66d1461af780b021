//! Route table: compiles the configured path patterns into a segment trie and finds the most specific route for a method and a normalised path.
//!
//! Pattern segments are literals, `*` (exactly one non-empty segment) and
//! `**` (zero or more segments, last only). Specificity, from most to least:
//! compared segment by segment from the left, a literal beats `*` and `*`
//! beats `**`; a pattern that ends exactly where the path ends beats a `**`
//! that would match zero segments there; for the same pattern, a route with an
//! explicit method list beats one without. The trie is searched depth-first in
//! exactly that order, and the first route that allows the method wins, so a
//! method the most specific pattern does not allow falls back to the next one.

use std::collections::HashMap;

use thiserror::Error;

use crate::path;

/// A route as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec<A> {
    pub name: String,
    /// `None` allows every method, including non-standard ones.
    pub methods: Option<Vec<String>>,
    pub path: String,
    pub auth: A,
}

/// A validated route, as returned by [`RouteTable::find`].
#[derive(Debug, Clone)]
pub struct Route<A> {
    /// Position in the configuration, for per-route tables such as metrics.
    index: usize,
    name: String,
    pattern: String,
    methods: Methods,
    auth: A,
}

impl<A> Route<A> {
    /// The route's position in the configured list (and in [`RouteTable::routes`]).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn auth(&self) -> &A {
        &self.auth
    }

    /// `None` when the route allows any method.
    pub fn methods(&self) -> Option<impl Iterator<Item = &'static str>> {
        match self.methods {
            Methods::Any => None,
            Methods::Only(mask) => Some(
                METHODS
                    .iter()
                    .enumerate()
                    .filter(move |&(bit, _)| mask & (1 << bit) != 0)
                    .map(|(_, &method)| method),
            ),
        }
    }

    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.allows(method_bit(method))
    }
}

/// Why a route configuration was refused. Every message names the route by
/// its index in the configured list and by its name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("routes[{index}] (\"\"): name must not be empty")]
    EmptyName { index: usize },
    #[error("routes[{index}] ({name:?}): name is already used by routes[{first}]")]
    DuplicateName {
        index: usize,
        name: String,
        first: usize,
    },
    #[error("routes[{index}] ({name:?}): path {path:?}: must start with \"/\"")]
    NotAbsolute {
        index: usize,
        name: String,
        path: String,
    },
    #[error(
        "routes[{index}] ({name:?}): path {path:?}: empty segment (repeated or trailing \"/\"; \
         a trailing slash is ignored when matching anyway)"
    )]
    EmptySegment {
        index: usize,
        name: String,
        path: String,
    },
    #[error("routes[{index}] ({name:?}): path {path:?}: \"**\" may only be the last segment")]
    DoubleStarNotLast {
        index: usize,
        name: String,
        path: String,
    },
    #[error(
        "routes[{index}] ({name:?}): path {path:?}: segment {segment:?} mixes \"*\" with other \
         characters; a wildcard must be a whole segment"
    )]
    MixedWildcard {
        index: usize,
        name: String,
        path: String,
        segment: String,
    },
    #[error(
        "routes[{index}] ({name:?}): path {path:?}: request paths are normalised to {normalized:?}, \
         so this pattern could never match; write it that way"
    )]
    NotNormalized {
        index: usize,
        name: String,
        path: String,
        normalized: String,
    },
    #[error("routes[{index}] ({name:?}): path {path:?}: {reason}, so no request could match it")]
    InvalidPath {
        index: usize,
        name: String,
        path: String,
        reason: path::PathError,
    },
    #[error(
        "routes[{index}] ({name:?}): methods list is empty; omit \"methods\" to allow any method"
    )]
    EmptyMethods { index: usize, name: String },
    #[error(
        "routes[{index}] ({name:?}): unknown method {method:?}; allowed: {ALLOWED_METHODS} \
         (upper-case)"
    )]
    InvalidMethod {
        index: usize,
        name: String,
        method: String,
    },
    #[error("routes[{index}] ({name:?}): method {method:?} is listed twice")]
    DuplicateMethod {
        index: usize,
        name: String,
        method: String,
    },
    #[error(
        "routes[{index}] ({name:?}): path {path:?}: differs from routes[{other}] ({other_name:?}) \
         only in letter case, with overlapping methods; keygate refuses requests that match a route \
         only when case is ignored, so give the two routes patterns that differ otherwise"
    )]
    CaseAmbiguous {
        index: usize,
        name: String,
        path: String,
        other: usize,
        other_name: String,
    },
    #[error(
        "routes[{index}] ({name:?}): path {path:?}: ambiguous with routes[{other}] ({other_name:?}), \
         which has the same pattern and overlapping methods"
    )]
    Ambiguous {
        index: usize,
        name: String,
        path: String,
        other: usize,
        other_name: String,
    },
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

/// HTTP methods are case-sensitive (RFC 9110 §9.1), so "get" is not GET.
fn method_bit(method: &str) -> Option<u8> {
    METHODS
        .iter()
        .position(|&known| known == method)
        .map(|bit| 1 << bit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Methods {
    Any,
    Only(u8),
}

impl Methods {
    /// `bit` is `None` for a method outside the standard set, which only a
    /// route without a method list can accept.
    fn allows(self, bit: Option<u8>) -> bool {
        match (self, bit) {
            (Methods::Any, _) => true,
            (Methods::Only(mask), Some(bit)) => mask & bit != 0,
            (Methods::Only(_), None) => false,
        }
    }

    /// Only two explicit lists can collide: an explicit list next to a route
    /// without one is the documented way to special-case some methods.
    fn ambiguous_with(self, other: Methods) -> bool {
        match (self, other) {
            (Methods::Any, Methods::Any) => true,
            (Methods::Only(a), Methods::Only(b)) => a & b != 0,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// foldhash: segments are looked up (never inserted) from client paths, so a fast seeded
    /// hasher is safe here, and SipHash was most of a lookup's cost.
    literals: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    star: Option<Box<Node>>,
    /// Routes whose pattern ends at this node; explicit method lists first.
    exact: Vec<usize>,
    /// Routes whose pattern is this node's path followed by `**`; explicit
    /// method lists first.
    rest: Vec<usize>,
}

impl Node {
    /// Depth-first in specificity order. Recursion only follows trie edges, so
    /// its depth is bounded by the longest pattern, not by the request path.
    fn find<A>(&self, routes: &[Route<A>], bit: Option<u8>, path: Option<&str>) -> Option<usize> {
        let first_allowed = |list: &[usize]| {
            list.iter()
                .copied()
                .find(|&i| routes[i].methods.allows(bit))
        };
        let Some(path) = path else {
            return first_allowed(&self.exact).or_else(|| first_allowed(&self.rest));
        };
        let (segment, tail) = match path.split_once('/') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (path, None),
        };
        if let Some(found) = self
            .literals
            .get(segment)
            .and_then(|child| child.find(routes, bit, tail))
        {
            return Some(found);
        }
        if !segment.is_empty()
            && let Some(found) = self
                .star
                .as_ref()
                .and_then(|child| child.find(routes, bit, tail))
        {
            return Some(found);
        }
        first_allowed(&self.rest)
    }
}

enum Segment<'a> {
    Literal(&'a str),
    Star,
    DoubleStar,
}

/// Splits a validated pattern; `/` has no segments.
fn segments(pattern: &str) -> impl Iterator<Item = Segment<'_>> {
    let body = &pattern[1..];
    body.split('/')
        .filter(move |_| !body.is_empty())
        .map(|segment| match segment {
            "*" => Segment::Star,
            "**" => Segment::DoubleStar,
            literal => Segment::Literal(literal),
        })
}

/// The configured routes, compiled for lookup.
#[derive(Debug, Clone)]
pub struct RouteTable<A> {
    routes: Vec<Route<A>>,
    root: Node,
    /// The same routes with their patterns in lower case, for [`RouteTable::find_case_folded`].
    folded: Node,
    /// Whether some pattern has an upper-case letter: only then can a lower-case path match a
    /// different route once folded.
    upper_case_patterns: bool,
}

impl<A> RouteTable<A> {
    pub fn build(specs: Vec<RouteSpec<A>>) -> Result<Self, RouteError> {
        let mut routes: Vec<Route<A>> = Vec::with_capacity(specs.len());
        let mut names: HashMap<String, usize> = HashMap::with_capacity(specs.len());
        let mut root = Node::default();
        let mut folded = Node::default();
        for (index, spec) in specs.into_iter().enumerate() {
            let RouteSpec {
                name,
                methods,
                path,
                auth,
            } = spec;
            if name.is_empty() {
                return Err(RouteError::EmptyName { index });
            }
            if let Some(&first) = names.get(&name) {
                return Err(RouteError::DuplicateName { index, name, first });
            }
            check_pattern(index, &name, &path)?;
            let methods = parse_methods(index, &name, methods)?;
            names.insert(name.clone(), index);
            routes.push(Route {
                index,
                name,
                pattern: path,
                methods,
                auth,
            });
            insert(&mut root, &routes, index, &routes[index].pattern)?;
            insert(
                &mut folded,
                &routes,
                index,
                &fold_case(&routes[index].pattern),
            )
            .map_err(|e| match e {
                RouteError::Ambiguous {
                    index,
                    name,
                    path,
                    other,
                    other_name,
                } => RouteError::CaseAmbiguous {
                    index,
                    name,
                    path,
                    other,
                    other_name,
                },
                e => e,
            })?;
        }
        let upper_case_patterns = routes.iter().any(|r| fold_case(&r.pattern) != r.pattern);
        Ok(RouteTable {
            routes,
            root,
            folded,
            upper_case_patterns,
        })
    }

    /// The route `method` and `path` would match if letter case did not matter, for spotting a
    /// request that an upstream with case-insensitive routing would serve as a route keygate did
    /// not check (`/V1/PRODUCTS` for `/v1/products`, `delete` for `DELETE`). `None` when the
    /// folded spelling is the request's own, so the answer could not differ from [`Self::find`].
    pub fn find_case_folded(&self, method: &str, path: &str) -> Option<&Route<A>> {
        let path_folds = path.bytes().any(|b| b.is_ascii_uppercase()) || self.upper_case_patterns;
        let method_folds = method.bytes().any(|b| b.is_ascii_lowercase());
        if !path_folds && !method_folds {
            return None;
        }
        let path = fold_case(path);
        let body = path.strip_prefix('/')?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let remaining = (!body.is_empty()).then_some(body);
        let bit = METHODS
            .iter()
            .position(|known| known.eq_ignore_ascii_case(method))
            .map(|bit| 1 << bit);
        self.folded
            .find(&self.routes, bit, remaining)
            .map(|index| &self.routes[index])
    }

    /// `path` must already be normalised (see [`crate::path::normalize`]). A
    /// trailing slash is ignored. Returns the most specific route whose
    /// pattern matches and which allows `method`.
    pub fn find(&self, method: &str, path: &str) -> Option<&Route<A>> {
        let body = path.strip_prefix('/')?;
        let body = body.strip_suffix('/').unwrap_or(body);
        let remaining = (!body.is_empty()).then_some(body);
        self.root
            .find(&self.routes, method_bit(method), remaining)
            .map(|index| &self.routes[index])
    }

    /// All routes, in configuration order.
    pub fn routes(&self) -> &[Route<A>] {
        &self.routes
    }
}

fn check_pattern(index: usize, name: &str, path: &str) -> Result<(), RouteError> {
    let name = || name.to_owned();
    let path_owned = || path.to_owned();
    let Some(body) = path.strip_prefix('/') else {
        return Err(RouteError::NotAbsolute {
            index,
            name: name(),
            path: path_owned(),
        });
    };
    if !body.is_empty() {
        // Before the wildcard checks, so "/v1/**/" is reported as the
        // stray slash it is.
        if body.split('/').any(str::is_empty) {
            return Err(RouteError::EmptySegment {
                index,
                name: name(),
                path: path_owned(),
            });
        }
        let count = body.split('/').count();
        for (position, segment) in body.split('/').enumerate() {
            if segment == "**" && position + 1 != count {
                return Err(RouteError::DoubleStarNotLast {
                    index,
                    name: name(),
                    path: path_owned(),
                });
            }
            if segment.contains('*') && segment != "*" && segment != "**" {
                return Err(RouteError::MixedWildcard {
                    index,
                    name: name(),
                    path: path_owned(),
                    segment: segment.to_owned(),
                });
            }
        }
    }
    // Literals are compared with normalised request paths, so a literal that
    // normalisation would rewrite (`.`, `%70`, lower-case hex, raw non-ASCII)
    // would silently never match and its protection would never apply.
    match path::normalize(path) {
        Ok(normalized) if normalized == path => Ok(()),
        Ok(normalized) => Err(RouteError::NotNormalized {
            index,
            name: name(),
            path: path_owned(),
            normalized: normalized.into_owned(),
        }),
        Err(reason) => Err(RouteError::InvalidPath {
            index,
            name: name(),
            path: path_owned(),
            reason,
        }),
    }
}

fn parse_methods(
    index: usize,
    name: &str,
    methods: Option<Vec<String>>,
) -> Result<Methods, RouteError> {
    let Some(methods) = methods else {
        return Ok(Methods::Any);
    };
    if methods.is_empty() {
        return Err(RouteError::EmptyMethods {
            index,
            name: name.to_owned(),
        });
    }
    let mut mask = 0;
    for method in methods {
        let Some(bit) = method_bit(&method) else {
            return Err(RouteError::InvalidMethod {
                index,
                name: name.to_owned(),
                method,
            });
        };
        if mask & bit != 0 {
            return Err(RouteError::DuplicateMethod {
                index,
                name: name.to_owned(),
                method,
            });
        }
        mask |= bit;
    }
    Ok(Methods::Only(mask))
}

/// Adds `routes[index]` (already validated) to the trie.
/// ASCII letters in lower case, except the hex digits of percent-escapes (which canonical paths
/// spell in upper case).
fn fold_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut hex_left = 0;
    for c in path.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c);
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Adds `routes[index]` to the trie under `pattern` (its own, or its case-folded spelling).
fn insert<A>(
    root: &mut Node,
    routes: &[Route<A>],
    index: usize,
    pattern: &str,
) -> Result<(), RouteError> {
    let route = &routes[index];
    let mut node = root;
    let mut ends_in_rest = false;
    for segment in segments(pattern) {
        node = match segment {
            Segment::Literal(literal) => node.literals.entry(literal.into()).or_default(),
            Segment::Star => node.star.get_or_insert_with(Box::default),
            Segment::DoubleStar => {
                ends_in_rest = true;
                break;
            }
        };
    }
    let list = if ends_in_rest {
        &mut node.rest
    } else {
        &mut node.exact
    };
    if let Some(&other) = list
        .iter()
        .find(|&&other| routes[other].methods.ambiguous_with(route.methods))
    {
        return Err(RouteError::Ambiguous {
            index,
            name: route.name.clone(),
            path: route.pattern.clone(),
            other,
            other_name: routes[other].name.clone(),
        });
    }
    list.push(index);
    // Stable, so the order among explicit lists (which are disjoint anyway)
    // stays the configuration order.
    list.sort_by_key(|&i| routes[i].methods == Methods::Any);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, methods: Option<&[&str]>, path: &str) -> RouteSpec<()> {
        RouteSpec {
            name: name.to_owned(),
            methods: methods.map(|m| m.iter().map(|&s| s.to_owned()).collect()),
            path: path.to_owned(),
            auth: (),
        }
    }

    fn any(name: &str, path: &str) -> RouteSpec<()> {
        spec(name, None, path)
    }

    fn only(name: &str, methods: &[&str], path: &str) -> RouteSpec<()> {
        spec(name, Some(methods), path)
    }

    fn table(specs: Vec<RouteSpec<()>>) -> RouteTable<()> {
        RouteTable::build(specs).expect("valid routes")
    }

    fn found<'t>(t: &'t RouteTable<()>, method: &str, path: &str) -> Option<&'t str> {
        t.find(method, path).map(Route::name)
    }

    fn build_err(specs: Vec<RouteSpec<()>>) -> RouteError {
        RouteTable::build(specs).expect_err("must be refused")
    }

    #[test]
    fn case_folded_lookup_finds_the_route_an_insensitive_upstream_would() {
        let t = table(vec![
            spec("products", Some(&["GET", "DELETE"]), "/v1/products/**"),
            spec("admin", None, "/v1/Admin"),
        ]);
        let name = |r: Option<&Route<()>>| r.map(|r| r.name().to_owned());
        assert_eq!(name(t.find("GET", "/V1/PRODUCTS/1")), None);
        assert_eq!(
            name(t.find_case_folded("GET", "/V1/PRODUCTS/1")),
            Some("products".into())
        );
        assert_eq!(
            name(t.find_case_folded("delete", "/v1/products/1")),
            Some("products".into())
        );
        // A route written with capitals is found from a lower-case path too.
        assert_eq!(
            name(t.find_case_folded("GET", "/v1/admin")),
            Some("admin".into())
        );
        // Escapes keep their (upper-case) hex digits.
        assert_eq!(
            name(t.find_case_folded("GET", "/V1/Products/%C3%A9")),
            Some("products".into())
        );
    }

    #[test]
    fn routes_that_differ_only_in_case_are_refused() {
        let err = RouteTable::build(vec![spec("a", None, "/v1/x"), spec("b", None, "/v1/X")])
            .unwrap_err();
        assert!(
            matches!(
                err,
                RouteError::CaseAmbiguous {
                    index: 1,
                    other: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn literal_beats_star() {
        let t = table(vec![
            any("star", "/v1/products/*"),
            any("lit", "/v1/products/special"),
        ]);
        assert_eq!(found(&t, "GET", "/v1/products/special"), Some("lit"));
        assert_eq!(found(&t, "GET", "/v1/products/other"), Some("star"));
    }

    #[test]
    fn star_beats_double_star() {
        let t = table(vec![any("rest", "/v1/**"), any("star", "/v1/*")]);
        assert_eq!(found(&t, "GET", "/v1/x"), Some("star"));
        assert_eq!(found(&t, "GET", "/v1/x/y"), Some("rest"));
        assert_eq!(found(&t, "GET", "/v1"), Some("rest"));
    }

    #[test]
    fn leftmost_difference_decides() {
        // Position 1 decides (literal "products" beats "*"), even though the
        // other pattern has more literals overall.
        let t = table(vec![
            any("star-detail", "/v1/*/detail"),
            any("products-rest", "/v1/products/**"),
        ]);
        assert_eq!(
            found(&t, "GET", "/v1/products/detail"),
            Some("products-rest")
        );
        assert_eq!(found(&t, "GET", "/v1/orders/detail"), Some("star-detail"));
    }

    #[test]
    fn backtracks_when_literal_branch_has_no_match() {
        let t = table(vec![any("abc", "/a/b/c"), any("a-star-d", "/a/*/d")]);
        assert_eq!(found(&t, "GET", "/a/b/d"), Some("a-star-d"));
        assert_eq!(found(&t, "GET", "/a/b/c"), Some("abc"));
        assert_eq!(found(&t, "GET", "/a/b/e"), None);
    }

    #[test]
    fn exact_end_beats_double_star_matching_nothing() {
        let t = table(vec![any("rest", "/v1/**"), any("exact", "/v1")]);
        assert_eq!(found(&t, "GET", "/v1"), Some("exact"));
        assert_eq!(found(&t, "GET", "/v1/"), Some("exact"));
        assert_eq!(found(&t, "GET", "/v1/x"), Some("rest"));
        // The same for the root: "/" stays reachable next to "/**".
        let t = table(vec![any("all", "/**"), any("root", "/")]);
        assert_eq!(found(&t, "GET", "/"), Some("root"));
        assert_eq!(found(&t, "GET", "/x"), Some("all"));
    }

    #[test]
    fn explicit_methods_beat_any_for_the_same_pattern() {
        let t = table(vec![
            any("any", "/v1/items"),
            only("get", &["GET", "HEAD"], "/v1/items"),
            only("post", &["POST"], "/v1/items"),
        ]);
        assert_eq!(found(&t, "GET", "/v1/items"), Some("get"));
        assert_eq!(found(&t, "HEAD", "/v1/items"), Some("get"));
        assert_eq!(found(&t, "POST", "/v1/items"), Some("post"));
        assert_eq!(found(&t, "DELETE", "/v1/items"), Some("any"));
        assert_eq!(found(&t, "PROPFIND", "/v1/items"), Some("any"));
    }

    #[test]
    fn method_falls_back_to_next_most_specific() {
        let t = table(vec![
            only("get-product", &["GET"], "/v1/products/*"),
            only("post-any", &["POST"], "/v1/**"),
        ]);
        assert_eq!(found(&t, "POST", "/v1/products/1"), Some("post-any"));
        assert_eq!(found(&t, "GET", "/v1/products/1"), Some("get-product"));
        assert_eq!(found(&t, "DELETE", "/v1/products/1"), None);
        assert_eq!(found(&t, "GET", "/v1/other"), None);
    }

    #[test]
    fn method_fallback_across_exact_and_rest() {
        let t = table(vec![
            only("get-exact", &["GET"], "/v1"),
            any("rest", "/v1/**"),
        ]);
        assert_eq!(found(&t, "GET", "/v1"), Some("get-exact"));
        assert_eq!(found(&t, "POST", "/v1"), Some("rest"));
    }

    #[test]
    fn methods_are_case_sensitive_and_unknown_ones_need_any() {
        let t = table(vec![
            only("get", &["GET"], "/x"),
            only("get-y", &["GET"], "/y"),
            any("any-y", "/y"),
        ]);
        assert_eq!(found(&t, "get", "/x"), None);
        assert_eq!(found(&t, "PROPFIND", "/x"), None);
        assert_eq!(found(&t, "get", "/y"), Some("any-y"));
        assert_eq!(found(&t, "GET", "/y"), Some("get-y"));
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        let t = table(vec![any("rest", "/v1/**")]);
        for p in ["/v1", "/v1/", "/v1/a", "/v1/a/", "/v1/a/b/c"] {
            assert_eq!(found(&t, "GET", p), Some("rest"), "{p}");
        }
        for p in ["/", "/v10", "/v2/v1", "/V1"] {
            assert_eq!(found(&t, "GET", p), None, "{p}");
        }
    }

    #[test]
    fn star_matches_exactly_one_non_empty_segment() {
        let t = table(vec![any("one", "/v1/*")]);
        assert_eq!(found(&t, "GET", "/v1/a"), Some("one"));
        assert_eq!(found(&t, "GET", "/v1/a/"), Some("one"));
        assert_eq!(found(&t, "GET", "/v1/"), None);
        assert_eq!(found(&t, "GET", "/v1"), None);
        assert_eq!(found(&t, "GET", "/v1/a/b"), None);
        // Not normalised, but `*` still must not swallow the empty segment.
        assert_eq!(found(&t, "GET", "/v1//"), None);
    }

    #[test]
    fn trailing_slash_is_ignored() {
        let t = table(vec![any("products", "/v1/products")]);
        assert_eq!(found(&t, "GET", "/v1/products"), Some("products"));
        assert_eq!(found(&t, "GET", "/v1/products/"), Some("products"));
        assert_eq!(found(&t, "GET", "/v1/products/x"), None);
    }

    #[test]
    fn root_route() {
        let t = table(vec![any("root", "/")]);
        assert_eq!(found(&t, "GET", "/"), Some("root"));
        assert_eq!(found(&t, "GET", "/x"), None);
        let t = table(vec![any("all", "/**")]);
        assert_eq!(found(&t, "GET", "/"), Some("all"));
        assert_eq!(found(&t, "GET", "/a/b"), Some("all"));
    }

    #[test]
    fn literals_are_case_sensitive() {
        let t = table(vec![any("lower", "/v1/products")]);
        assert_eq!(found(&t, "GET", "/v1/Products"), None);
        assert_eq!(found(&t, "GET", "/V1/products"), None);
    }

    #[test]
    fn non_absolute_or_empty_path_finds_nothing() {
        let t = table(vec![any("all", "/**")]);
        assert_eq!(found(&t, "GET", ""), None);
        assert_eq!(found(&t, "GET", "v1"), None);
    }

    #[test]
    fn works_with_normalised_paths() {
        let t = table(vec![
            only("admin", &["GET"], "/v1/admin"),
            only("products", &["GET"], "/v1/products/*"),
            any("cafe", "/caf%C3%A9"),
        ]);
        for raw in [
            "/v1/products/%2e%2e/admin",
            "/v1//admin/",
            "/v1/./%61dmin",
            "/x/../v1/admin",
        ] {
            let p = path::normalize(raw).unwrap();
            assert_eq!(found(&t, "GET", &p), Some("admin"), "{raw}");
        }
        for raw in ["/café", "/caf%c3%a9"] {
            let p = path::normalize(raw).unwrap();
            assert_eq!(found(&t, "GET", &p), Some("cafe"), "{raw}");
        }
    }

    #[test]
    fn accessors() {
        let t = RouteTable::build(vec![RouteSpec {
            name: "items".to_owned(),
            methods: Some(vec!["POST".to_owned(), "GET".to_owned()]),
            path: "/v1/items/*".to_owned(),
            auth: vec!["items:read"],
        }])
        .unwrap();
        let r = t.find("GET", "/v1/items/3").unwrap();
        assert_eq!(r.name(), "items");
        assert_eq!(r.pattern(), "/v1/items/*");
        assert_eq!(r.auth(), &vec!["items:read"]);
        assert_eq!(r.methods().unwrap().collect::<Vec<_>>(), ["GET", "POST"]);
        assert!(r.allows_method("POST"));
        assert!(!r.allows_method("PUT"));
        assert_eq!(t.routes().len(), 1);
        let t = table(vec![any("a", "/")]);
        assert!(t.routes()[0].methods().is_none());
        assert!(t.routes()[0].allows_method("BREW"));
    }

    #[test]
    fn two_hundred_routes() {
        let mut specs = Vec::new();
        for i in 0..50 {
            specs.push(only(
                &format!("list{i}"),
                &["GET"],
                &format!("/svc{i}/items"),
            ));
            specs.push(only(
                &format!("get{i}"),
                &["GET"],
                &format!("/svc{i}/items/*"),
            ));
            specs.push(only(
                &format!("write{i}"),
                &["PUT", "DELETE"],
                &format!("/svc{i}/items/*"),
            ));
            specs.push(any(&format!("admin{i}"), &format!("/svc{i}/admin/**")));
        }
        let t = table(specs);
        assert_eq!(t.routes().len(), 200);
        for i in 0..50 {
            let name = |kind: &str| format!("{kind}{i}");
            let f = |method: &str, path: String| found(&t, method, &path).map(str::to_owned);
            assert_eq!(f("GET", format!("/svc{i}/items")), Some(name("list")));
            assert_eq!(f("GET", format!("/svc{i}/items/")), Some(name("list")));
            assert_eq!(f("GET", format!("/svc{i}/items/{i}")), Some(name("get")));
            assert_eq!(f("PUT", format!("/svc{i}/items/{i}")), Some(name("write")));
            assert_eq!(f("DELETE", format!("/svc{i}/items/x")), Some(name("write")));
            assert_eq!(f("POST", format!("/svc{i}/items/x")), None);
            assert_eq!(f("POST", format!("/svc{i}/items")), None);
            assert_eq!(f("GET", format!("/svc{i}/items/x/y")), None);
            assert_eq!(f("POST", format!("/svc{i}/admin")), Some(name("admin")));
            assert_eq!(f("GET", format!("/svc{i}/admin/a/b")), Some(name("admin")));
        }
        assert_eq!(found(&t, "GET", "/svc50/items"), None);
        assert_eq!(found(&t, "GET", "/"), None);
    }

    #[test]
    fn error_empty_name() {
        let e = build_err(vec![any("a", "/"), any("", "/x")]);
        assert_eq!(e, RouteError::EmptyName { index: 1 });
        assert_eq!(e.to_string(), r#"routes[1] (""): name must not be empty"#);
    }

    #[test]
    fn error_duplicate_name() {
        let e = build_err(vec![any("a", "/x"), any("b", "/y"), any("a", "/z")]);
        assert!(matches!(
            e,
            RouteError::DuplicateName {
                index: 2,
                first: 0,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            r#"routes[2] ("a"): name is already used by routes[0]"#
        );
    }

    #[test]
    fn error_not_absolute() {
        for p in ["", "v1/x", "*", "**"] {
            let e = build_err(vec![any("r", p)]);
            assert!(
                matches!(e, RouteError::NotAbsolute { index: 0, .. }),
                "{p:?}"
            );
        }
        assert_eq!(
            build_err(vec![any("r", "v1")]).to_string(),
            r#"routes[0] ("r"): path "v1": must start with "/""#
        );
    }

    #[test]
    fn error_empty_segment() {
        for p in ["//", "/v1//x", "/v1/", "//v1", "/v1/**/"] {
            let e = build_err(vec![any("r", p)]);
            assert!(matches!(e, RouteError::EmptySegment { .. }), "{p:?}: {e}");
        }
    }

    #[test]
    fn error_double_star_not_last() {
        let e = build_err(vec![
            any("a", "/a"),
            any("b", "/b"),
            any("c", "/c"),
            any("admin", "/v1/**/x"),
        ]);
        assert_eq!(
            e.to_string(),
            r#"routes[3] ("admin"): path "/v1/**/x": "**" may only be the last segment"#
        );
        let e = build_err(vec![any("r", "/**/**")]);
        assert!(matches!(e, RouteError::DoubleStarNotLast { .. }));
    }

    #[test]
    fn error_mixed_wildcard() {
        for p in ["/v1/*.json", "/v1/a*", "/***", "/v1/*a*/x"] {
            let e = build_err(vec![any("r", p)]);
            assert!(matches!(e, RouteError::MixedWildcard { .. }), "{p:?}: {e}");
        }
        assert_eq!(
            build_err(vec![any("r", "/v1/*.json")]).to_string(),
            r#"routes[0] ("r"): path "/v1/*.json": segment "*.json" mixes "*" with other characters; a wildcard must be a whole segment"#
        );
    }

    #[test]
    fn error_pattern_not_normalised() {
        for (p, normalized) in [
            ("/v1/./x", "/v1/x"),
            ("/v1/../x", "/x"),
            ("/v1/%70roducts", "/v1/products"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
        ] {
            let e = build_err(vec![any("r", p)]);
            match e {
                RouteError::NotNormalized { normalized: n, .. } => assert_eq!(n, normalized),
                other => panic!("{p:?}: {other}"),
            }
        }
        for (p, reason) in [
            ("/a%2Fb", path::PathError::EncodedSeparator),
            ("/a%zz", path::PathError::BadEscape),
            ("/a\\b", path::PathError::BadCharacter),
            ("/a?b", path::PathError::BadCharacter),
        ] {
            let e = build_err(vec![any("r", p)]);
            match e {
                RouteError::InvalidPath { reason: r, .. } => assert_eq!(r, reason, "{p:?}"),
                other => panic!("{p:?}: {other}"),
            }
        }
    }

    #[test]
    fn error_methods() {
        let e = build_err(vec![only("r", &[], "/x")]);
        assert!(matches!(e, RouteError::EmptyMethods { index: 0, .. }));
        for m in ["get", "Get", "CONNECT", "PROPFIND", ""] {
            let e = build_err(vec![only("r", &["GET", m], "/x")]);
            assert!(matches!(e, RouteError::InvalidMethod { .. }), "{m:?}: {e}");
        }
        assert_eq!(
            build_err(vec![only("r", &["get"], "/x")]).to_string(),
            r#"routes[0] ("r"): unknown method "get"; allowed: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE (upper-case)"#
        );
        let e = build_err(vec![only("r", &["GET", "POST", "GET"], "/x")]);
        assert_eq!(
            e.to_string(),
            r#"routes[0] ("r"): method "GET" is listed twice"#
        );
    }

    #[test]
    fn error_ambiguous() {
        let e = build_err(vec![
            only("a", &["GET", "POST"], "/v1/*"),
            any("b", "/v1/**"),
            only("c", &["POST"], "/v1/*"),
        ]);
        assert_eq!(
            e.to_string(),
            r#"routes[2] ("c"): path "/v1/*": ambiguous with routes[0] ("a"), which has the same pattern and overlapping methods"#
        );
        let e = build_err(vec![any("a", "/v1/**"), any("b", "/v1/**")]);
        assert!(matches!(
            e,
            RouteError::Ambiguous {
                index: 1,
                other: 0,
                ..
            }
        ));
        let e = build_err(vec![any("a", "/"), any("b", "/")]);
        assert!(matches!(
            e,
            RouteError::Ambiguous {
                index: 1,
                other: 0,
                ..
            }
        ));
        // Disjoint lists, and a list next to "any", are fine.
        table(vec![
            only("a", &["GET"], "/v1/*"),
            only("b", &["POST"], "/v1/*"),
            any("c", "/v1/*"),
        ]);
    }

    /// Compares the trie with a direct, linear reading of the specificity rule
    /// over many pseudo-random tables.
    #[test]
    fn trie_agrees_with_reference_rule() {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Rank {
            Literal,
            Star,
            // Where the path ends and one pattern ends with it, the other can
            // only continue with a `**` matching nothing.
            End,
            DoubleStar,
        }

        fn matches(pattern: &[&str], path: &[&str]) -> bool {
            match (pattern.split_first(), path.split_first()) {
                (Some((&"**", _)), _) => true,
                (None, None) => true,
                (Some((&"*", p)), Some((s, rest))) => !s.is_empty() && matches(p, rest),
                (Some((lit, p)), Some((s, rest))) => lit == s && matches(p, rest),
                _ => false,
            }
        }

        fn key(pattern: &[&str], any_methods: bool) -> (Vec<Rank>, bool) {
            let mut ranks: Vec<Rank> = pattern
                .iter()
                .map(|s| match *s {
                    "*" => Rank::Star,
                    "**" => Rank::DoubleStar,
                    _ => Rank::Literal,
                })
                .collect();
            ranks.push(Rank::End);
            (ranks, any_methods)
        }

        fn split(p: &str) -> Vec<&str> {
            let body = p[1..].strip_suffix('/').unwrap_or(&p[1..]);
            if body.is_empty() {
                Vec::new()
            } else {
                body.split('/').collect()
            }
        }

        let mut patterns = vec![String::from("/"), String::from("/**")];
        let atoms = ["a", "b", "*"];
        let mut prefixes = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &prefixes {
                for a in atoms {
                    let q = format!("{p}/{a}");
                    patterns.push(q.clone());
                    patterns.push(format!("{q}/**"));
                    next.push(q);
                }
            }
            prefixes = next;
        }
        let method_sets: [Option<&[&str]>; 4] =
            [None, Some(&["GET"]), Some(&["POST"]), Some(&["GET", "PUT"])];
        let mut paths = vec![String::from("/")];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &frontier {
                for a in ["a", "b", "c"] {
                    let q = format!("{p}/{a}");
                    paths.push(q.clone());
                    paths.push(format!("{q}/"));
                    next.push(q);
                }
            }
            frontier = next;
        }

        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next_random = move |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        for round in 0..300 {
            let mut specs = Vec::new();
            for n in 0..1 + next_random(12) {
                let pattern = &patterns[next_random(patterns.len())];
                let methods = method_sets[next_random(method_sets.len())];
                specs.push(spec(&format!("r{n}"), methods, pattern));
            }
            // Drop the ambiguous ones rather than fail the build.
            let mut kept: Vec<RouteSpec<()>> = Vec::new();
            for s in specs {
                if RouteTable::build(kept.iter().cloned().chain([s.clone()]).collect()).is_ok() {
                    kept.push(s);
                }
            }
            let t = table(kept.clone());
            for path in &paths {
                let segs = split(path);
                for method in ["GET", "POST", "PUT", "BREW"] {
                    let expected = kept
                        .iter()
                        .filter(|s| matches(&split(&s.path), &segs))
                        .filter(|s| {
                            s.methods
                                .as_ref()
                                .is_none_or(|m| m.iter().any(|x| x == method))
                        })
                        .min_by_key(|s| key(&split(&s.path), s.methods.is_none()))
                        .map(|s| s.name.as_str());
                    assert_eq!(
                        found(&t, method, path),
                        expected,
                        "round {round}: {method} {path} in {:?}",
                        kept.iter()
                            .map(|s| (&s.name, &s.path, &s.methods))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
