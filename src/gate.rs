//! The decision for one request: path → route → credential → key → scopes → workspace.
//!
//! Pure and synchronous: it reads the request head and a snapshot and returns what to do, so the
//! proxy stays thin and the whole decision can be unit-tested and benchmarked without a server.

use crate::auth::{self, AuthFailure, Credential, WorkspaceError};
use crate::config::{LimitsConfig, RouteAuth, Unmatched};
use crate::limits::{self, LimitName, Limiter, Policy, RateHeaders, Subject, Usage};
use crate::path::{self, PathError};
use crate::routes::{Route, RouteTable};
use crate::snapshot::{KeyEntry, Owner, Snapshot, Workspace, WorkspaceKind};
use http::HeaderMap;
use std::borrow::Cow;
use std::sync::Arc;

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
        subject_type: &'static str,
    },
}

#[derive(Debug)]
pub enum Verdict<'r> {
    /// Send it on. `identity` is `None` on a public route.
    Forward {
        identity: Option<Identity>,
        /// The canonical path, owned only when it differs from the request's.
        path: Cow<'r, str>,
    },
    Reject(Rejection),
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

/// The limiter and the limits it enforces.
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
    /// Who the key's requests count against, under which limits; `None`: not limited.
    fn subject<'k>(&self, key: &'k KeyEntry) -> Option<(Subject<'k>, Policy, &'static str)> {
        match &key.owner {
            Owner::Internal => Some((
                Subject::InternalKey(key.id()),
                self.config.internal?,
                "internal",
            )),
            Owner::Workspace(w) => {
                let base = match w.kind {
                    WorkspaceKind::Live => self.config.live,
                    WorkspaceKind::Sandbox => self.config.sandbox,
                };
                let policy = Policy {
                    burst_per_second: w.limits.burst_per_second.unwrap_or(base.burst_per_second),
                    sustained_per_minute: w
                        .limits
                        .sustained_per_minute
                        .unwrap_or(base.sustained_per_minute),
                };
                Some((
                    Subject::CachedWorkspace(&w.limiter_key, &w.limiter_state),
                    policy,
                    w.kind.as_str(),
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
        }
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

    /// Decides one request. `raw_path` is the URI path without the query.
    pub fn decide<'g, 'r>(
        &'g self,
        snapshot: Option<&Snapshot>,
        method: &str,
        raw_path: &'r str,
        headers: &HeaderMap,
        now_unix: i64,
    ) -> Decision<'g, 'r> {
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
                    },
                    rate: None,
                    key: None,
                };
            }
            RouteAuth::Scopes(required) => required,
        };
        let Some(snapshot) = snapshot else {
            return reject(route, Rejection::NoSnapshot);
        };
        let (token, env) = match auth::credential(headers) {
            Credential::Token(t, e) => (t, e),
            Credential::Missing => return reject(route, Rejection::MissingCredentials),
            Credential::Malformed => {
                return reject(route, Rejection::InvalidCredentials(AuthFailure::Malformed));
            }
        };
        let key = match auth::authenticate(snapshot, token, env, now_unix) {
            Ok(k) => k,
            Err(f) => return reject(route, Rejection::InvalidCredentials(f)),
        };
        // Every authenticated request counts, refused ones included (a 403 flood is still a
        // flood); a request over a limit is not counted and is answered before anything else.
        let mut rate = None;
        let limited = self
            .limits
            .as_ref()
            .and_then(|l| Some((l, l.subject(key)?)));
        if let Some((limits, (subject, policy, subject_type))) = limited {
            match limits.limiter.check(subject, policy) {
                limits::Verdict::Admitted(usage) => rate = Some(usage),
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
        if !key.scopes.grants_all(required) {
            let missing = key.scopes.missing(required);
            let missing = missing.map(|s| s.as_str().to_owned()).collect();
            return refuse(Rejection::InsufficientScope(missing));
        }
        let workspace = match auth::workspace(snapshot, key, headers) {
            Ok(w) => w,
            Err(WorkspaceError::Required) => return refuse(Rejection::WorkspaceRequired),
            Err(WorkspaceError::Unknown) => return refuse(Rejection::UnknownWorkspace),
        };
        Decision {
            route,
            verdict: Verdict::Forward {
                identity: Some(Identity {
                    key: key.clone(),
                    workspace,
                }),
                path,
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
}
