//! The decision for one request: path → route → credential → key → scopes → workspace.
//!
//! Pure and synchronous: it reads the request head and a snapshot and returns what to do, so the
//! proxy stays thin and the whole decision can be unit-tested and benchmarked without a server.

use crate::auth::{self, AuthFailure, Credential, WorkspaceError};
use crate::browser::{self, Carrier};
use crate::config::{LimitsConfig, RouteAuth, Unmatched};
use crate::limits::{
    self, InFlight, LimitName, Limiter, Policy, RateHeaders, Subject, SubjectKind, Usage,
};
use crate::path::{self, PathError};
use crate::restrictions::RestrictionKind;
use crate::routes::{Route, RouteTable};
use crate::secret::Env;
use crate::shield::Shield;
use crate::snapshot::{AuthType, KeyEntry, Owner, Snapshot, Workspace, WorkspaceKind};
use crate::tokens::TokenVerifier;
use http::HeaderMap;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Who a forwarded request acts as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: Arc<KeyEntry>,
    pub workspace: Arc<Workspace>,
}

/// Why a request is answered by keygate instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No snapshot has been loaded yet: fail closed.
    NoSnapshot,
    BadPath(PathError),
    NoRoute,
    MissingCredentials,
    InvalidCredentials(AuthFailure),
    /// The scopes the route requires and the key lacks, in the route's order.
    InsufficientScope(Vec<String>),
    WorkspaceRequired,
    UnknownWorkspace,
    /// Over a limit; a request after `retry_after_secs` is admitted.
    RateLimited {
        limit: LimitName,
        /// The limit's value, for the message.
        allowed: u32,
        retry_after_secs: u32,
        /// `live`, `sandbox` or `internal`, for metrics.
        subject_type: SubjectKind,
    },
    /// Fleet-wide limits could not be consulted and `on_outage` is `deny`.
    LimitsUnavailable,
    /// The key's restrictions refuse this request: which one failed.
    KeyRestricted(RestrictionKind),
    /// The client's address failed authentication too often and is in its cool-down.
    TooManyFailures {
        retry_after_secs: u32,
    },
    /// The caller has as many requests in flight on this host as its cap allows.
    ConcurrencyLimited {
        /// The cap, for the message.
        allowed: u32,
        subject_type: SubjectKind,
    },
}

/// What the gate reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a, 'r> {
    pub method: &'a str,
    /// The path as the client sent it (normalised by the gate).
    pub raw_path: &'r str,
    /// The query, for a browser client token in `access_token` ([`crate::browser`]).
    pub query: Option<&'r str>,
    pub headers: &'a HeaderMap,
    /// The client's address ([`crate::client_address`]); `None` on a socket with no IP peer.
    pub client: Option<IpAddr>,
}

#[derive(Debug)]
pub enum Verdict<'r> {
    /// Send it on. `identity` is `None` on a public route.
    Forward {
        identity: Option<Identity>,
        /// The canonical path, owned only when it differs from the request's.
        path: Cow<'r, str>,
        /// The caller's place among its requests in flight, when it has a cap: held until the
        /// request is done.
        slot: Option<InFlight>,
        /// Where the client token came from when not `Authorization`: it must be taken out of
        /// the query or `Sec-WebSocket-Protocol` before the request is forwarded.
        strip: Option<Carrier>,
    },
    Reject(Rejection),
    /// Fleet-wide limits: wait for Redis (bounded), then decide again with how the wait ended.
    Wait(limits::Waiter),
}

/// The outcome with the route it was decided on (absent when no route matched) and, for an
/// authenticated request that was counted against limits, where those limits now stand.
#[derive(Debug)]
pub struct Decision<'g, 'r> {
    pub route: Option<&'g Route<RouteAuth>>,
    pub verdict: Verdict<'r>,
    pub rate: Option<Usage>,
    /// The key, once authenticated: also on a 403 or 429 after authentication.
    pub key: Option<Arc<KeyEntry>>,
}

impl Decision<'_, '_> {
    /// A refusal before any route was matched.
    pub fn rejected(rejection: Rejection) -> Self {
        Decision {
            route: None,
            verdict: Verdict::Reject(rejection),
            rate: None,
            key: None,
        }
    }
}

/// The limiter and the limits it enforces, with the count of requests in flight for the caps.
pub struct RateLimits {
    pub limiter: std::sync::Arc<Limiter>,
    pub config: LimitsConfig,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    pub fn new(limiter: Arc<Limiter>, config: LimitsConfig) -> RateLimits {
        RateLimits { limiter, config }
    }

    /// A place among the caller's requests in flight, `subject` being the key's from
    /// [`RateLimits::subject`]: `Ok(None)` when it has no cap.
    fn enter(
        &self,
        key: &KeyEntry,
        subject: Subject<'_>,
        subject_type: SubjectKind,
    ) -> Result<Option<InFlight>, Rejection> {
        let Some(cap) = self.config.concurrency.cap_for(key) else {
            return Ok(None);
        };
        match self.limiter.enter(subject, cap) {
            Some(place) => Ok(Some(place)),
            None => Err(Rejection::ConcurrencyLimited {
                allowed: cap.get(),
                subject_type,
            }),
        }
    }

    /// Who the key's requests count against, under which limits; `None`: not limited.
    fn subject<'k>(&self, key: &'k KeyEntry) -> Option<(Subject<'k>, Policy, SubjectKind)> {
        match &key.owner {
            Owner::Internal => Some((
                Subject::InternalKey(key.id()),
                self.config.internal?,
                SubjectKind::Internal,
            )),
            Owner::Workspace(w) => {
                let base = match w.kind {
                    WorkspaceKind::Live => self.config.live,
                    WorkspaceKind::Sandbox => self.config.sandbox,
                };
                let policy = w.limits.over(base);
                Some((
                    Subject::CachedWorkspace(&w.limiter_key, &w.limiter_state),
                    policy,
                    w.kind.into(),
                ))
            }
        }
    }
}

/// The request-independent half of the decision: the route table and the unmatched policy.
#[derive(Debug)]
pub struct Gate {
    routes: RouteTable<RouteAuth>,
    unmatched: Unmatched,
    /// What an unmatched request requires under `unmatched: authenticate`.
    any_key: RouteAuth,
    limits: Option<RateLimits>,
    shield: Option<Arc<Shield>>,
    /// `None`: access tokens are not accepted (a JWT is a malformed credential).
    tokens: Option<Arc<TokenVerifier>>,
}

impl Gate {
    pub fn new(
        routes: RouteTable<RouteAuth>,
        unmatched: Unmatched,
        limits: Option<RateLimits>,
    ) -> Gate {
        Gate {
            routes,
            unmatched,
            any_key: RouteAuth::Scopes(Box::new([])),
            limits,
            shield: None,
            tokens: None,
        }
    }

    /// Accepts OAuth access tokens as well as API keys ([`crate::tokens`]).
    pub fn with_tokens(mut self, tokens: Option<Arc<TokenVerifier>>) -> Gate {
        self.tokens = tokens;
        self
    }

    /// Refuses addresses that fail authentication too often ([`crate::shield`]).
    pub fn with_shield(mut self, shield: Option<Arc<Shield>>) -> Gate {
        self.shield = shield;
        self
    }

    /// The name of the route at `index` in the table.
    pub fn route_name(&self, index: usize) -> &str {
        self.routes.routes().get(index).map_or("", |r| r.name())
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[Route<RouteAuth>] {
        self.routes.routes()
    }

    /// Which rate-limit headers responses carry (`limits.headers`).
    pub fn rate_headers(&self) -> RateHeaders {
        self.limits
            .as_ref()
            .map_or(RateHeaders::BOTH, |l| l.config.headers)
    }

    /// Whether a request that keygate would let through without a route's scope check (no
    /// route, or a public one) matches a protected route once letter case is ignored. An upstream
    /// that routes without regard to case would serve it as that route, so it is refused instead.
    fn shadows_protected_route(
        &self,
        route: Option<&Route<RouteAuth>>,
        method: &str,
        path: &str,
    ) -> bool {
        if route.is_some_and(|r| !matches!(r.auth(), RouteAuth::Public)) {
            return false;
        }
        if route.is_none() && self.unmatched == Unmatched::Deny {
            return false;
        }
        self.routes
            .find_case_folded(method, path)
            .is_some_and(|shadow| {
                !matches!(shadow.auth(), RouteAuth::Public)
                    && route.is_none_or(|r| r.index() != shadow.index())
            })
    }

    /// Decides one request from an unknown address. `raw_path` is the URI path without the
    /// query.
    pub fn decide<'g, 'r>(
        &'g self,
        snapshot: Option<&Snapshot>,
        method: &str,
        raw_path: &'r str,
        headers: &HeaderMap,
        now_unix: i64,
    ) -> Decision<'g, 'r> {
        let req = Incoming {
            method,
            raw_path,
            query: None,
            headers,
            client: None,
        };
        self.decide_with(snapshot, req, now_unix, limits::Attempt::First)
    }

    /// Decides one request, for its `attempt` (after a wait for Redis: how the wait ended).
    pub fn decide_with<'g, 'r>(
        &'g self,
        snapshot: Option<&Snapshot>,
        req: Incoming<'_, 'r>,
        now_unix: i64,
        attempt: limits::Attempt,
    ) -> Decision<'g, 'r> {
        let Incoming {
            method,
            raw_path,
            query,
            headers,
            client,
        } = req;
        let reject = |route, r| Decision {
            route,
            verdict: Verdict::Reject(r),
            rate: None,
            key: None,
        };
        let path = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(e) => return reject(None, Rejection::BadPath(e)),
        };
        let route = self.routes.find(method, &path);
        if self.shadows_protected_route(route, method, &path) {
            return reject(None, Rejection::NoRoute);
        }
        let requirement = match (route, self.unmatched) {
            (Some(r), _) => r.auth(),
            (None, Unmatched::Authenticate) => &self.any_key,
            (None, Unmatched::Deny) => return reject(None, Rejection::NoRoute),
        };
        let required = match requirement {
            RouteAuth::Public => {
                return Decision {
                    route,
                    verdict: Verdict::Forward {
                        identity: None,
                        path,
                        slot: None,
                        strip: None,
                    },
                    rate: None,
                    key: None,
                };
            }
            RouteAuth::Scopes(required) => (required, false),
            RouteAuth::Browser(required) => (required, true),
        };
        let (required, browser) = required;
        let Some(snapshot) = snapshot else {
            return reject(route, Rejection::NoSnapshot);
        };
        // A shielded address is refused before its credential is read: the same answer
        // whatever the key, so the shield cannot tell a guesser which key is good.
        // (No clock is read while no address is shielded, which is nearly always.)
        if let Some(shield) = self.shield.as_ref().filter(|s| s.shielded() > 0)
            && let Some(left) = shield.refused_for(client, Instant::now())
        {
            let retry_after_secs = u32::try_from(left.as_secs() + 1).unwrap_or(u32::MAX);
            return reject(route, Rejection::TooManyFailures { retry_after_secs });
        }
        let failed = |f: AuthFailure| {
            if let Some(shield) = &self.shield {
                shield.record_failure(client, Instant::now());
            }
            reject(route, Rejection::InvalidCredentials(f))
        };
        // An API key is borrowed from the snapshot; a token's entry is made (or cached) for it.
        let token_entry;
        let mut strip = None;
        let presented = match browser::find(query, headers) {
            browser::Found::None => auth::credential(headers),
            // Outside a browser route nothing is read from the URL or the subprotocols, and a
            // request carrying a credential there is not forwarded either.
            _ if !browser => return failed(AuthFailure::Misplaced),
            browser::Found::Several => return failed(AuthFailure::Malformed),
            browser::Found::One(token, carrier) => {
                // Two credentials: which one counts is not left to chance.
                if headers.contains_key(http::header::AUTHORIZATION) {
                    return failed(AuthFailure::Malformed);
                }
                strip = Some(carrier);
                match auth::parse_bearer(token) {
                    // Only a client token is accepted here: an API key or an OAuth token in a
                    // URL is refused without being looked up.
                    token @ Credential::AccessToken(_) => token,
                    Credential::Token(..) => return failed(AuthFailure::Misplaced),
                    _ => return failed(AuthFailure::Malformed),
                }
            }
        };
        let (key, env) = match presented {
            Credential::Token(token, env) => {
                match auth::authenticate(snapshot, token, env, now_unix) {
                    Ok(k) => (k, env),
                    Err(f) => return failed(f),
                }
            }
            Credential::AccessToken(token) => {
                let Some(tokens) = &self.tokens else {
                    return failed(AuthFailure::Malformed);
                };
                match tokens.authenticate(snapshot, token, now_unix) {
                    Ok(k) if strip.is_some() && k.auth_type() != AuthType::ClientToken => {
                        return failed(AuthFailure::Misplaced);
                    }
                    Ok(k) => {
                        token_entry = k;
                        // The environment matters only to internal keys; a token never is one.
                        (&token_entry, Env::Live)
                    }
                    Err(f) => return failed(f),
                }
            }
            Credential::Missing => return reject(route, Rejection::MissingCredentials),
            Credential::Malformed => return failed(AuthFailure::Malformed),
        };
        // Every authenticated request counts, refused ones included (a 403 flood is still a
        // flood); a request over a limit is not counted and is answered before anything else.
        let mut rate = None;
        let limited = self
            .limits
            .as_ref()
            .and_then(|l| Some((l, l.subject(key)?)));
        if let Some((limits, (subject, policy, subject_type))) = limited {
            match limits.limiter.check_with(subject, policy, attempt) {
                limits::Verdict::Admitted(usage) => rate = Some(usage),
                limits::Verdict::Wait(waiter) => {
                    return Decision {
                        route,
                        verdict: Verdict::Wait(waiter),
                        rate: None,
                        key: Some(key.clone()),
                    };
                }
                limits::Verdict::Unavailable => {
                    return Decision {
                        route,
                        verdict: Verdict::Reject(Rejection::LimitsUnavailable),
                        rate: None,
                        key: Some(key.clone()),
                    };
                }
                limits::Verdict::Limited {
                    limit,
                    retry_after_secs,
                    usage,
                } => {
                    let allowed = match limit {
                        LimitName::Burst => policy.burst_per_second,
                        LimitName::Sustained => policy.sustained_per_minute,
                    };
                    return Decision {
                        route,
                        verdict: Verdict::Reject(Rejection::RateLimited {
                            limit,
                            allowed,
                            retry_after_secs,
                            subject_type,
                        }),
                        rate: Some(usage),
                        key: Some(key.clone()),
                    };
                }
            }
        }
        let refuse = |r| Decision {
            route,
            verdict: Verdict::Reject(r),
            rate,
            key: Some(key.clone()),
        };
        // Restrictions come after the count (a refused request is still counted) and before
        // scopes: a restricted key used from the wrong place learns nothing about its scopes.
        if let Some(restrictions) = snapshot.restrictions(key)
            && let Err(kind) = restrictions.check(client, headers, route.map(|r| r.name()))
        {
            return refuse(Rejection::KeyRestricted(kind));
        }
        if !key.scopes.grants_all(required) {
            let missing = key.scopes.missing(required);
            let missing = missing.map(|s| s.as_str().to_owned()).collect();
            return refuse(Rejection::InsufficientScope(missing));
        }
        let workspace = match auth::workspace(snapshot, key, env, headers) {
            Ok(w) => w,
            Err(WorkspaceError::Required) => return refuse(Rejection::WorkspaceRequired),
            Err(WorkspaceError::Unknown) => return refuse(Rejection::UnknownWorkspace),
        };
        // Last: only a request that is let through holds a place in flight.
        // (A caller without limits has no cap either: `limits.internal` holds the internal one.)
        let slot = match limited
            .map(|(limits, (subject, _, kind))| limits.enter(key, subject, kind))
            .transpose()
        {
            Ok(slot) => slot.flatten(),
            Err(r) => return refuse(r),
        };
        Decision {
            route,
            verdict: Verdict::Forward {
                identity: Some(Identity {
                    key: key.clone(),
                    workspace,
                }),
                path,
                slot,
                strip,
            },
            rate,
            key: Some(key.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteSpec;
    use crate::scopes::RequiredScope;

    fn gate(unmatched: Unmatched) -> Gate {
        gate_with(unmatched, "/docs/**")
    }

    fn gate_with(unmatched: Unmatched, public: &str) -> Gate {
        let write = RouteAuth::Scopes(Box::new([RequiredScope::parse("products:write").unwrap()]));
        let routes = RouteTable::build(vec![
            RouteSpec {
                name: "products-write".into(),
                methods: Some(vec!["DELETE".into()]),
                path: "/v1/products/**".into(),
                auth: write,
            },
            RouteSpec {
                name: "docs".into(),
                methods: None,
                path: public.into(),
                auth: RouteAuth::Public,
            },
        ])
        .unwrap();
        Gate::new(routes, unmatched, None)
    }

    fn rejection(g: &Gate, method: &str, path: &str) -> Option<Rejection> {
        match g.decide(None, method, path, &HeaderMap::new(), 0).verdict {
            Verdict::Reject(r) => Some(r),
            Verdict::Forward { .. } => None,
            Verdict::Wait(_) => panic!("no fleet-wide limits here"),
        }
    }

    #[test]
    fn a_request_that_matches_a_protected_route_only_without_case_is_refused() {
        let g = gate(Unmatched::Authenticate);
        // Unmatched, but DELETE /v1/products/1 to a case-insensitive upstream.
        assert_eq!(
            rejection(&g, "DELETE", "/V1/PRODUCTS/1"),
            Some(Rejection::NoRoute)
        );
        assert_eq!(
            rejection(&g, "delete", "/v1/products/1"),
            Some(Rejection::NoRoute)
        );
        // Other unmatched requests still need a key (no snapshot here: fail closed).
        assert_eq!(
            rejection(&g, "GET", "/V1/OTHER"),
            Some(Rejection::NoSnapshot)
        );
        // A public route folded is no protected one: the request is simply unmatched.
        assert_eq!(rejection(&g, "GET", "/DOCS/a"), Some(Rejection::NoSnapshot));
        // The exact routes are decided as usual.
        assert_eq!(rejection(&g, "GET", "/docs/A"), None);
        assert_eq!(
            rejection(&g, "DELETE", "/v1/products/1"),
            Some(Rejection::NoSnapshot)
        );
    }

    #[test]
    fn a_public_catch_all_does_not_open_a_protected_route_spelt_in_capitals() {
        let g = gate_with(Unmatched::Deny, "/**");
        assert_eq!(
            rejection(&g, "DELETE", "/V1/PRODUCTS/1"),
            Some(Rejection::NoRoute)
        );
        assert_eq!(rejection(&g, "GET", "/V1/PRODUCTS/1"), None);
        assert_eq!(rejection(&g, "DELETE", "/about"), None);
    }

    #[test]
    fn under_unmatched_deny_the_answer_is_the_usual_404() {
        let g = gate(Unmatched::Deny);
        assert_eq!(
            rejection(&g, "DELETE", "/V1/PRODUCTS/1"),
            Some(Rejection::NoRoute)
        );
    }

    // -----------------------------------------------------------------------------------------
    // `decide` on a real snapshot and config: each rejection, and what is forwarded.

    use crate::config::{Config, DEFAULT_SANDBOX};
    use crate::limits::{FakeClock, RateHeaders};
    use crate::secret::KeyHash;
    use crate::snapshot::Format;
    use std::path::Path;

    /// 2030-01-01T00:00:00Z.
    const NOW: i64 = 1_893_456_000;

    /// A well-formed secret: the prefix, then `name` padded to the 32 characters required.
    fn live(name: &str) -> String {
        format!("sk_live_{name:0<32}")
    }

    fn test(name: &str) -> String {
        format!("sk_test_{name:0<32}")
    }

    fn hash(secret: &str) -> String {
        KeyHash::of(secret).to_hex()
    }

    /// Every kind of key `decide` tells apart, parsed as a keys file is.
    fn snapshot() -> Snapshot {
        let doc = format!(
            "version: 1
workspaces:
  - {{ id: ws_live, type: live }}
  - {{ id: ws_sandbox, type: sandbox }}
  - {{ id: ws_tight, type: live, limits: {{ burst_per_second: 1 }} }}
keys:
  - {{ id: key_reader, hash: {reader}, workspace: ws_live, scopes: [products:read] }}
  - {{ id: key_sandbox, hash: {sandbox}, workspace: ws_sandbox, scopes: [products:read] }}
  - {{ id: key_tight, hash: {tight}, workspace: ws_tight, scopes: [products:read] }}
  - {{ id: key_revoked, hash: {revoked}, workspace: ws_live, scopes: [products:read], status: revoked }}
  - {{ id: key_expired, hash: {expired}, workspace: ws_live, scopes: [products:read], expires_at: '2029-12-31T23:59:59Z' }}
  - {{ id: key_mislabelled, hash: {mislabelled}, workspace: ws_live, scopes: [products:read] }}
  - {{ id: key_short, hash: {short}, workspace: ws_live, scopes: [products:read] }}
  - {{ id: key_internal, hash: {internal}, internal: true, scopes: ['*'] }}
",
            reader = hash(&live("reader")),
            sandbox = hash(&test("sandbox")),
            tight = hash(&live("tight")),
            revoked = hash(&live("revoked")),
            expired = hash(&live("expired")),
            mislabelled = hash(&test("mislabelled")),
            short = hash("sk_live_short"),
            internal = hash(&live("internal")),
        );
        let snap = crate::snapshot::parse(doc.as_bytes(), Format::Yaml, "gate tests").unwrap();
        assert_eq!(snap.skipped_count(), 0, "{:?}", snap.skipped());
        snap
    }

    const CONFIG: &str = "
listen: { addresses: ['127.0.0.1:8080'] }
upstream: { address: '127.0.0.1:9000' }
snapshot: { file: keys.yaml }
routes:
  - { name: health, methods: [GET], path: /health, auth: none }
  - { name: products-read, methods: [GET], path: /v1/products/**, scopes: [products:read] }
  - { name: products-write, methods: [DELETE], path: /v1/products/**, scopes: [products:write] }
  - { name: reports, methods: [GET], path: /v1/reports/**, scopes: [reports:read, reports:export] }
";

    /// The routes above, under `unmatched`, with `limits` counted or none.
    fn configured(unmatched: &str, limits: Option<RateLimits>) -> Gate {
        let yaml = format!("{CONFIG}unmatched: {unmatched}\n");
        let conf = Config::from_yaml(&yaml, Path::new("keygate.yaml")).unwrap();
        Gate::new(conf.routes, conf.unmatched, limits)
    }

    /// Limits on a clock that never moves, so that every request falls in one window.
    fn limits(live: Policy, sandbox: Policy, internal: Option<Policy>) -> Option<RateLimits> {
        Some(RateLimits::new(
            Arc::new(Limiter::new(Arc::new(FakeClock::at(1_000)))),
            LimitsConfig {
                live,
                sandbox,
                internal,
                headers: RateHeaders::BOTH,
                concurrency: Default::default(),
            },
        ))
    }

    fn policy(burst_per_second: u32) -> Policy {
        Policy {
            burst_per_second,
            sustained_per_minute: 1_000,
        }
    }

    fn bearer(secret: &str) -> (&'static str, String) {
        ("authorization", format!("Bearer {secret}"))
    }

    fn workspace_header(id: &str) -> (&'static str, String) {
        (auth::WORKSPACE_HEADER, id.to_owned())
    }

    fn decide<'g>(
        g: &'g Gate,
        snap: Option<&Snapshot>,
        method: &str,
        path: &'g str,
        headers: &[(&'static str, String)],
    ) -> Decision<'g, 'g> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        g.decide(snap, method, path, &map, NOW)
    }

    fn refusal(d: &Decision) -> Option<Rejection> {
        match &d.verdict {
            Verdict::Reject(r) => Some(r.clone()),
            Verdict::Forward { .. } => None,
            Verdict::Wait(_) => panic!("no fleet-wide limits here"),
        }
    }

    /// The rejection of `GET /v1/products/1` (route `products-read`) with these headers.
    fn read_refused(headers: &[(&'static str, String)]) -> Option<Rejection> {
        let (g, snap) = (configured("deny", None), snapshot());
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", headers);
        assert_eq!(d.route.map(|r| r.name()), Some("products-read"));
        refusal(&d)
    }

    /// The key id and workspace id a forwarded request acts as, or why it was refused.
    fn acts_as(d: &Decision) -> Result<(String, String), Rejection> {
        match &d.verdict {
            Verdict::Forward {
                identity: Some(i), ..
            } => Ok((i.key.id().to_owned(), i.workspace.id.to_string())),
            Verdict::Forward { identity: None, .. } => panic!("forwarded without an identity"),
            Verdict::Reject(r) => Err(r.clone()),
            Verdict::Wait(_) => panic!("no fleet-wide limits here"),
        }
    }

    fn ids(key: &str, workspace: &str) -> Result<(String, String), Rejection> {
        Ok((key.to_owned(), workspace.to_owned()))
    }

    #[test]
    fn a_path_that_does_not_normalise_is_refused_before_any_route_is_matched() {
        let (g, snap) = (configured("deny", None), snapshot());
        for (path, error) in [
            ("v1/products/1", PathError::NotAbsolute),
            ("/v1/products/%252e%252e/admin", PathError::DoubleEncoded),
            ("/v1/products/..;/admin", PathError::DotSegmentParams),
        ] {
            let d = decide(&g, Some(&snap), "GET", path, &[bearer(&live("reader"))]);
            assert_eq!(refusal(&d), Some(Rejection::BadPath(error)), "{path}");
            assert!(d.route.is_none() && d.key.is_none(), "{path}");
        }
    }

    #[test]
    fn under_unmatched_deny_an_unmatched_request_is_refused_before_authentication() {
        let (g, snap) = (configured("deny", None), snapshot());
        // Wrong path, then a path whose routes all take other methods.
        for (method, path) in [("GET", "/v2/other"), ("POST", "/v1/products/1")] {
            let d = decide(&g, Some(&snap), method, path, &[bearer(&live("reader"))]);
            assert_eq!(refusal(&d), Some(Rejection::NoRoute), "{method} {path}");
            assert!(d.route.is_none() && d.key.is_none());
        }
    }

    #[test]
    fn under_unmatched_authenticate_an_unmatched_request_needs_any_valid_key() {
        let (g, snap) = (configured("authenticate", None), snapshot());
        let d = decide(&g, Some(&snap), "GET", "/v2/other", &[]);
        assert_eq!(refusal(&d), Some(Rejection::MissingCredentials));
        let unknown = [bearer(&live("nobody"))];
        let d = decide(&g, Some(&snap), "GET", "/v2/other", &unknown);
        assert_eq!(
            refusal(&d),
            Some(Rejection::InvalidCredentials(AuthFailure::Unknown))
        );
        // No scope required: a key holding only products:read reaches any other path.
        let d = decide(
            &g,
            Some(&snap),
            "GET",
            "/v2/other",
            &[bearer(&live("reader"))],
        );
        assert_eq!(acts_as(&d), ids("key_reader", "ws_live"));
        assert!(d.route.is_none());
    }

    #[test]
    fn a_public_route_is_forwarded_without_a_snapshot_or_a_key() {
        let g = configured("deny", None);
        let garbage = [("authorization", "Basic bm90IGEga2V5".to_owned())];
        for headers in [&[][..], &garbage[..]] {
            let d = decide(&g, None, "GET", "/health", headers);
            assert!(
                matches!(d.verdict, Verdict::Forward { identity: None, .. }),
                "{:?}",
                d.verdict
            );
            assert_eq!(d.route.map(|r| r.name()), Some("health"));
            assert!(d.key.is_none() && d.rate.is_none());
        }
    }

    #[test]
    fn without_a_snapshot_a_protected_route_fails_closed() {
        let g = configured("deny", None);
        let d = decide(
            &g,
            None,
            "GET",
            "/v1/products/1",
            &[bearer(&live("reader"))],
        );
        assert_eq!(refusal(&d), Some(Rejection::NoSnapshot));
        assert_eq!(d.route.map(|r| r.name()), Some("products-read"));
    }

    #[test]
    fn a_request_without_authorization_gets_missing_credentials() {
        assert_eq!(read_refused(&[]), Some(Rejection::MissingCredentials));
    }

    #[test]
    fn a_malformed_authorization_gets_invalid_credentials_malformed() {
        let malformed = Some(Rejection::InvalidCredentials(AuthFailure::Malformed));
        let reader = live("reader");
        for value in [
            format!("Basic {reader}"),
            reader.clone(),
            "Bearer not-a-key".to_owned(),
            // Its hash is in the snapshot, but the shape is checked first.
            "Bearer sk_live_short".to_owned(),
        ] {
            assert_eq!(
                read_refused(&[("authorization", value.clone())]),
                malformed,
                "{value}"
            );
        }
        let twice = [bearer(&reader), bearer(&reader)];
        assert_eq!(read_refused(&twice), malformed);
    }

    #[test]
    fn an_unknown_key_gets_invalid_credentials_unknown() {
        assert_eq!(
            read_refused(&[bearer(&live("nobody"))]),
            Some(Rejection::InvalidCredentials(AuthFailure::Unknown))
        );
    }

    #[test]
    fn a_revoked_key_gets_invalid_credentials_revoked() {
        assert_eq!(
            read_refused(&[bearer(&live("revoked"))]),
            Some(Rejection::InvalidCredentials(AuthFailure::Revoked))
        );
    }

    #[test]
    fn an_expired_key_gets_invalid_credentials_expired() {
        assert_eq!(
            read_refused(&[bearer(&live("expired"))]),
            Some(Rejection::InvalidCredentials(AuthFailure::Expired))
        );
    }

    #[test]
    fn a_test_secret_on_a_live_workspace_gets_wrong_environment() {
        assert_eq!(
            read_refused(&[bearer(&test("mislabelled"))]),
            Some(Rejection::InvalidCredentials(AuthFailure::WrongEnvironment))
        );
    }

    #[test]
    fn a_refusal_before_authentication_carries_no_key() {
        let (g, snap) = (configured("deny", None), snapshot());
        let d = decide(
            &g,
            Some(&snap),
            "GET",
            "/v1/products/1",
            &[bearer(&live("revoked"))],
        );
        assert!(d.key.is_none() && d.rate.is_none());
    }

    #[test]
    fn a_key_lacking_the_routes_scopes_gets_insufficient_scope_naming_them_in_route_order() {
        let (g, snap) = (configured("deny", None), snapshot());
        let d = decide(
            &g,
            Some(&snap),
            "GET",
            "/v1/reports/q1",
            &[bearer(&live("reader"))],
        );
        assert_eq!(
            refusal(&d),
            Some(Rejection::InsufficientScope(vec![
                "reports:read".into(),
                "reports:export".into()
            ]))
        );
        // Authenticated: the 403 names the key (for logs and usage).
        assert_eq!(d.key.as_ref().map(|k| k.id()), Some("key_reader"));
        assert_eq!(d.route.map(|r| r.name()), Some("reports"));
        let d = decide(
            &g,
            Some(&snap),
            "DELETE",
            "/v1/products/1",
            &[bearer(&live("reader"))],
        );
        assert_eq!(
            refusal(&d),
            Some(Rejection::InsufficientScope(vec!["products:write".into()]))
        );
    }

    #[test]
    fn a_key_holding_the_scopes_is_forwarded_as_its_own_workspace() {
        let (g, snap) = (configured("deny", None), snapshot());
        let d = decide(
            &g,
            Some(&snap),
            "GET",
            "/v1/products/1",
            &[bearer(&live("reader"))],
        );
        assert_eq!(acts_as(&d), ids("key_reader", "ws_live"));
        assert_eq!(d.key.as_ref().map(|k| k.id()), Some("key_reader"));
        let d = decide(
            &g,
            Some(&snap),
            "GET",
            "/v1/products/1",
            &[bearer(&test("sandbox"))],
        );
        assert_eq!(acts_as(&d), ids("key_sandbox", "ws_sandbox"));
        // An internal key holding `*` passes any scope check.
        let headers = [bearer(&live("internal")), workspace_header("ws_live")];
        let d = decide(&g, Some(&snap), "GET", "/v1/reports/q1", &headers);
        assert_eq!(acts_as(&d), ids("key_internal", "ws_live"));
    }

    #[test]
    fn the_forwarded_path_is_the_canonical_one_and_borrowed_when_unchanged() {
        let (g, snap) = (configured("deny", None), snapshot());
        let key = [bearer(&live("reader"))];
        let d = decide(&g, Some(&snap), "GET", "/v1/products/%41b", &key);
        let Verdict::Forward { path, .. } = d.verdict else {
            panic!("{:?}", d.verdict)
        };
        assert_eq!(path, "/v1/products/Ab");
        let d = decide(&g, Some(&snap), "GET", "/v1/products/Ab", &key);
        let Verdict::Forward { path, .. } = d.verdict else {
            panic!("{:?}", d.verdict)
        };
        assert!(matches!(path, Cow::Borrowed("/v1/products/Ab")), "{path:?}");
    }

    #[test]
    fn a_customer_keys_x_workspace_id_is_ignored() {
        let (g, snap) = (configured("deny", None), snapshot());
        for named in ["ws_sandbox", "ws_unknown", ""] {
            let headers = [bearer(&live("reader")), workspace_header(named)];
            let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
            assert_eq!(acts_as(&d), ids("key_reader", "ws_live"), "{named:?}");
        }
    }

    #[test]
    fn an_internal_key_acts_for_the_workspace_it_names() {
        let (g, snap) = (configured("deny", None), snapshot());
        for (named, expected) in [("ws_sandbox", "ws_sandbox"), (" ws_live ", "ws_live")] {
            let headers = [bearer(&live("internal")), workspace_header(named)];
            let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
            assert_eq!(acts_as(&d), ids("key_internal", expected), "{named:?}");
        }
    }

    #[test]
    fn an_internal_key_naming_no_workspace_gets_workspace_required() {
        let (g, snap) = (configured("deny", None), snapshot());
        let key = || bearer(&live("internal"));
        for headers in [
            vec![key()],
            vec![key(), workspace_header("  ")],
            vec![
                key(),
                workspace_header("ws_live"),
                workspace_header("ws_live"),
            ],
        ] {
            let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
            assert_eq!(
                refusal(&d),
                Some(Rejection::WorkspaceRequired),
                "{headers:?}"
            );
            assert_eq!(d.key.as_ref().map(|k| k.id()), Some("key_internal"));
        }
    }

    #[test]
    fn an_internal_key_naming_an_unknown_workspace_gets_unknown_workspace() {
        let (g, snap) = (configured("deny", None), snapshot());
        let headers = [bearer(&live("internal")), workspace_header("ws_gone")];
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
        assert_eq!(refusal(&d), Some(Rejection::UnknownWorkspace));
        assert_eq!(d.key.as_ref().map(|k| k.id()), Some("key_internal"));
    }

    #[test]
    fn over_the_burst_limit_a_live_key_gets_rate_limited_with_the_limit_it_hit() {
        let g = configured("deny", limits(policy(2), DEFAULT_SANDBOX, None));
        let snap = snapshot();
        let key = [bearer(&live("reader"))];
        for _ in 0..2 {
            let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &key);
            assert_eq!(acts_as(&d), ids("key_reader", "ws_live"));
            assert!(d.rate.is_some());
        }
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &key);
        match refusal(&d) {
            Some(Rejection::RateLimited {
                limit: LimitName::Burst,
                allowed: 2,
                retry_after_secs,
                subject_type: SubjectKind::Live,
            }) => assert!(retry_after_secs >= 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(d.key.as_ref().map(|k| k.id()), Some("key_reader"));
        assert!(d.rate.is_some());
    }

    #[test]
    fn a_sandbox_key_is_counted_under_the_sandbox_policy() {
        let g = configured("deny", limits(policy(100), policy(1), None));
        let snap = snapshot();
        let key = [bearer(&test("sandbox"))];
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &key);
        assert!(refusal(&d).is_none(), "{:?}", d.verdict);
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &key);
        assert!(
            matches!(
                refusal(&d),
                Some(Rejection::RateLimited {
                    allowed: 1,
                    subject_type: SubjectKind::Sandbox,
                    ..
                })
            ),
            "{:?}",
            d.verdict
        );
    }

    #[test]
    fn a_workspaces_own_limit_overrides_the_configured_one() {
        // ws_tight allows 1 request a second; live workspaces otherwise 100.
        let g = configured("deny", limits(policy(100), DEFAULT_SANDBOX, None));
        let snap = snapshot();
        let key = [bearer(&live("tight"))];
        assert!(refusal(&decide(&g, Some(&snap), "GET", "/v1/products/1", &key)).is_none());
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &key);
        assert!(
            matches!(
                refusal(&d),
                Some(Rejection::RateLimited {
                    limit: LimitName::Burst,
                    allowed: 1,
                    ..
                })
            ),
            "{:?}",
            d.verdict
        );
        // Another live workspace is not held back by ws_tight's count or limit.
        let other = [bearer(&live("reader"))];
        assert!(refusal(&decide(&g, Some(&snap), "GET", "/v1/products/1", &other)).is_none());
    }

    #[test]
    fn refused_requests_count_and_over_the_limit_429_comes_before_403() {
        let g = configured("deny", limits(policy(1), DEFAULT_SANDBOX, None));
        let snap = snapshot();
        let key = [bearer(&live("reader"))];
        let d = decide(&g, Some(&snap), "GET", "/v1/reports/q1", &key);
        assert!(matches!(refusal(&d), Some(Rejection::InsufficientScope(_))));
        assert!(d.rate.is_some(), "a 403 after authentication is counted");
        let d = decide(&g, Some(&snap), "GET", "/v1/reports/q1", &key);
        assert!(
            matches!(refusal(&d), Some(Rejection::RateLimited { .. })),
            "{:?}",
            d.verdict
        );
    }

    #[test]
    fn internal_keys_are_limited_only_under_limits_internal() {
        let snap = snapshot();
        let headers = [bearer(&live("internal")), workspace_header("ws_live")];
        // Live workspaces allow 1 a second, but an internal key is not counted against them.
        let g = configured("deny", limits(policy(1), policy(1), None));
        for _ in 0..5 {
            let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
            assert_eq!(acts_as(&d), ids("key_internal", "ws_live"));
            assert!(d.rate.is_none());
        }
        let g = configured("deny", limits(policy(100), policy(100), Some(policy(1))));
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
        assert!(d.rate.is_some());
        let d = decide(&g, Some(&snap), "GET", "/v1/products/1", &headers);
        assert!(
            matches!(
                refusal(&d),
                Some(Rejection::RateLimited {
                    allowed: 1,
                    subject_type: SubjectKind::Internal,
                    ..
                })
            ),
            "{:?}",
            d.verdict
        );
    }
}
