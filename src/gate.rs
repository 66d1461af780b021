//! The decision for one request: path → route → credential → key → scopes → workspace.
//!
//! Pure and synchronous: it reads the request head and a snapshot and returns what to do, so the
//! proxy stays thin and the whole decision can be unit-tested and benchmarked without a server.

use crate::auth::{self, AuthFailure, Credential, WorkspaceError};
use crate::config::{RouteAuth, Unmatched};
use crate::path::{self, PathError};
use crate::routes::{Route, RouteTable};
use crate::snapshot::{KeyEntry, Snapshot, Workspace};
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

/// The outcome with the route it was decided on (absent when no route matched).
#[derive(Debug)]
pub struct Decision<'g, 'r> {
    pub route: Option<&'g Route<RouteAuth>>,
    pub verdict: Verdict<'r>,
}

/// The request-independent half of the decision: the route table and the unmatched policy.
#[derive(Debug)]
pub struct Gate {
    routes: RouteTable<RouteAuth>,
    unmatched: Unmatched,
    /// What an unmatched request requires under `unmatched: authenticate`.
    any_key: RouteAuth,
}

impl Gate {
    pub fn new(routes: RouteTable<RouteAuth>, unmatched: Unmatched) -> Gate {
        Gate {
            routes,
            unmatched,
            any_key: RouteAuth::Scopes(Box::new([])),
        }
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
        };
        let path = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(e) => return reject(None, Rejection::BadPath(e)),
        };
        let route = self.routes.find(method, &path);
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
        if !key.scopes.grants_all(required) {
            let missing = key.scopes.missing(required);
            let missing = missing.map(|s| s.as_str().to_owned()).collect();
            return reject(route, Rejection::InsufficientScope(missing));
        }
        let workspace = match auth::workspace(snapshot, key, headers) {
            Ok(w) => w,
            Err(WorkspaceError::Required) => return reject(route, Rejection::WorkspaceRequired),
            Err(WorkspaceError::Unknown) => return reject(route, Rejection::UnknownWorkspace),
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
        }
    }
}
